"""The gain rule (pure): escalate only when the task is verifiable and the predicted gain of
a ladder over its cheap rung reaches a minimum; skip the cheap rung when it is predicted to
fail. ``Router.choose`` applies it to classes whose policy has a ``gain`` section.

The escalation route is a ladder (it answers on its cheap rung first and climbs only while its
check rejects the answer) or a multi-sample route (best-of-n, a vote, a search: it always runs
in full). A ladder is verifiable when its first check can judge the request; a multi-sample
route when its candidates' answers can be read and compared — the question involves numbers
or lists lettered options. Open questions ("Name three colours.") never escalate to a vote.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing.config import DeliberateConfig, Route
from routing.decision import CandidateView, GainView
from routing.policy_config import GainRule
from strategies.answers import lists_options
from strategies.verifiers.arithmetic import is_checkable


def answerable(question: str) -> bool:
    """Whether sampled answers to ``question`` can be read and voted on: it involves numbers
    or lists at least two lettered options (``A) ...``)."""
    return any(c.isdigit() for c in question) or lists_options(question)


def verifiable(rule: GainRule, ladder: Route, question: str) -> bool:
    """Whether the escalation route can judge an answer to ``question``: a ladder's first
    check, else (a multi-sample route) whether its answers can be compared."""
    if rule.verifiable != "auto":
        return rule.verifiable == "always"
    rungs = ladder.escalate_to or []
    if not rungs:
        return answerable(question)
    if rungs[0].verifier == "learned-gate":
        return answerable(question)  # its ladder votes on sampled answers: they must compare
    if rungs[0].verifier == "arithmetic":
        # a plain-arithmetic question is checked against its own value; elsewhere the checker
        # only sees equations the answer writes, which a bare answer does not
        return is_checkable(question, "")
    return True  # confidence and judge verifiers judge any answer


def apply_gain(
    rule: GainRule,
    config: DeliberateConfig,
    views: Sequence[CandidateView],
    question: str,
) -> tuple[str, str, GainView, int]:
    """(route, why, estimate, start rung) for one request of a class with a gain rule."""
    by_route = {v.route: v for v in views}
    cheap, ladder = by_route.get(rule.cheap), by_route.get(rule.ladder)
    p_cheap = cheap.quality if cheap is not None else None
    p_ladder = ladder.quality if ladder is not None else None
    gain = None if p_cheap is None or p_ladder is None else p_ladder - p_cheap
    ok = verifiable(rule, config.route(rule.ladder), question)
    view = GainView(p_cheap, p_ladder, gain, ok)
    ladder_usable = ladder is not None and ladder.kept
    if not ladder_usable:
        return rule.cheap, "the ladder cannot serve now; the cheap route", view, 0
    if not ok:
        return rule.cheap, "unverifiable: never escalates; the cheap route", view, 0
    if p_cheap is not None and p_cheap >= rule.never_escalate_above:
        why = f"predicted easy (P(cheap)={p_cheap:.2f} >= {rule.never_escalate_above:g})"
        return rule.cheap, why, view, 0
    if gain is not None and gain < rule.min_gain:
        return rule.cheap, f"predicted gain {gain:+.2f} < {rule.min_gain:g}", view, 0
    start = 0
    if (
        rule.start_high_below is not None
        and p_cheap is not None
        and p_cheap < rule.start_high_below
        and config.route(rule.ladder).escalate_to  # a multi-sample route has no rungs
    ):
        start = 1
    if gain is None:
        why = "gain unknown (no measurements); verifiable: the ladder"
    else:
        why = f"predicted gain {gain:+.2f} >= {rule.min_gain:g}"
    if start:
        why += f"; predicted hard (P(cheap)<{rule.start_high_below:g}): starts at rung 1"
    return rule.ladder, why, view, start
