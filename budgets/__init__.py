"""Caps, cost estimates, admission and tenant budgets (pure policy, plus the BudgetStore port)."""
