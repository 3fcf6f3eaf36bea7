"""Rule-based request classes: the first class whose rules all hold wins."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from routing.features import Features
from routing.policy_config import MatchRules, RequestClass


@dataclass(frozen=True, slots=True)
class ClassMatch:
    name: str
    why: str
    """The signal that decided it, e.g. ``regex``, ``keyword:prove``, ``default``."""


class _Compiled:
    def __init__(self, rules: MatchRules) -> None:
        self.rules = rules
        words = [re.escape(k.strip()) for k in rules.keywords if k.strip()]
        self.keywords = re.compile(r"\b(?:" + "|".join(words) + r")\b", re.I) if words else None
        self.regex = [re.compile(p, re.I) for p in rules.regex]
        self.tags = frozenset(t.lower() for t in rules.tags)

    def why(self, f: Features) -> str | None:
        """The deciding signal when every set condition holds, else None."""
        r = self.rules
        hits: list[str] = []
        if self.keywords is not None:
            m = self.keywords.search(f.text)
            if m is None:
                return None
            hits.append(f"keyword:{m.group(0).lower()}")
        if self.regex:
            if not any(p.search(f.text) for p in self.regex):
                return None
            hits.append("regex")
        if self.tags:
            common = self.tags & f.tags
            if not common:
                return None
            hits.append(f"tag:{min(common)}")
        holds = (
            r.has_code is None or r.has_code == f.has_code,
            r.min_digits is None or f.digits >= r.min_digits,
            r.min_operators is None or f.operators >= r.min_operators,
            r.min_constraints is None or f.constraints >= r.min_constraints,
            r.min_chars is None or f.chars >= r.min_chars,
            r.max_chars is None or f.chars <= r.max_chars,
        )
        if not all(holds):
            return None
        set_checks = [
            name
            for name, value in (
                ("code", r.has_code),
                ("digits", r.min_digits),
                ("operators", r.min_operators),
                ("constraints", r.min_constraints),
                ("length", r.min_chars if r.min_chars is not None else r.max_chars),
            )
            if value is not None
        ]
        return ",".join(hits + set_checks) or "always"


class Classifier:
    """Classes in policy-file order; ``default`` when none matches."""

    def __init__(self, classes: Sequence[RequestClass], default: str) -> None:
        self._classes = [(c.name, _Compiled(c.match)) for c in classes]
        self.default = default

    def classify(self, features: Features) -> ClassMatch:
        for name, rules in self._classes:
            if (why := rules.why(features)) is not None:
                return ClassMatch(name, why)
        return ClassMatch(self.default, "default")
