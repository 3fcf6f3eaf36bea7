"""Test-time-compute strategies, verifiers and token accounting (backends only via ports)."""
