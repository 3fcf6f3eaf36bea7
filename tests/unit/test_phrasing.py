"""Phrasing templates (routing/phrasing.py) and the fit / held-out eval-set splits."""

from __future__ import annotations

import json
import re

import pytest

from routing import phrasing, tasks
from routing.evalset import make_eval_set


@pytest.mark.parametrize("family", list(tasks._ALL))
def test_every_template_rewords_every_task_and_keeps_its_numbers(family: str) -> None:
    for task in tasks.family_tasks(family, 30, seed=4):
        worded = [phrasing.rephrase(family, task.prompt, t) for t in range(4)]
        assert worded[0] == task.prompt
        assert len(set(worded)) == 4, worded  # four different phrasings
        for text in worded:  # same numbers (and so the same reference), same answer format
            assert re.findall(r"\d+", text) == re.findall(r"\d+", task.prompt), text
            assert text.endswith((tasks.NUMBER_SUFFIX, tasks.LETTER_SUFFIX))


def test_families_with_templates_are_every_task_family() -> None:
    assert set(phrasing.families()) == set(tasks._ALL)


def test_rephrase_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="family"):
        phrasing.rephrase("nope", "What is 1 + 1?", 1)
    with pytest.raises(ValueError, match="0-3"):
        phrasing.rephrase("arithmetic", "What is 1 + 1? x", 4)
    with pytest.raises(ValueError, match="does not fit"):
        phrasing.rephrase("arithmetic", "Tell me 1 + 1.", 2)


def test_fit_and_heldout_splits_share_no_template_item_or_prompt() -> None:
    fit = make_eval_set(120, seed=0, split="fit")
    held = make_eval_set(120, seed=0, split="heldout")
    template = {i.id: next(t for t in i.tags if t.startswith("template:")) for i in fit + held}
    assert {template[i.id] for i in fit} == {"template:0", "template:1"}
    assert {template[i.id] for i in held} == {"template:2", "template:3"}
    assert all(i.id.endswith("-h") and "heldout" in i.tags for i in held)
    assert not {i.id for i in fit} & {i.id for i in held}
    prompts = {i.messages[0]["content"] for i in fit}
    assert not prompts & {i.messages[0]["content"] for i in held}
    # the same families and mix in both, so the held-out check measures the wording
    assert {i.family for i in fit} == {i.family for i in held}
    assert sum(i.difficulty == "hard" for i in fit) == sum(i.difficulty == "hard" for i in held)


def test_json_extraction_references_read_the_named_field() -> None:
    for task in tasks.family_tasks("json_extraction", 40, seed=2):
        path = re.search(r'"([\w.]+)"', task.prompt)
        assert path is not None
        record = json.loads(task.prompt.splitlines()[1])
        for key in path[1].split("."):
            record = record[key]
        assert str(record) == task.reference
    assert {t.kind for t in tasks.family_tasks("json_extraction", 2, 0)} == {"flat", "nested"}
    assert tasks.REQUEST_CLASS["json_extraction"] == "lookup"
    assert "json_extraction" not in tasks.FAMILIES  # the benchmark's six are unchanged
