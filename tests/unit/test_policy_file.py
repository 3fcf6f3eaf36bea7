"""Writing an edited policy back with its comments (routing/policy_file.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from routing import calibration as cal
from routing.loader import parse_config
from routing.policy_file import rewrite

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"

SOURCE = """\
# top comment
version: 1
routes:
  # the first route
  - name: a
    strategy: single-pass
    params: {n: 2, waves: [1, 2]}   # inline
    budget:
      deadline_s: 10  # ten seconds

  # the second route
  - name: b
    strategy: best-of-n
"""


def test_unchanged_data_gives_the_same_text() -> None:
    assert rewrite(SOURCE, yaml.safe_load(SOURCE)) == SOURCE
    text = SHIPPED.read_text(encoding="utf-8")
    assert rewrite(text, yaml.safe_load(text)) == text


def test_edits_keep_comments_order_and_flow_style() -> None:
    data = yaml.safe_load(SOURCE)
    data["routes"][0]["params"]["waves"] = [4, 4]
    data["routes"][0]["budget"]["max_visible_tokens"] = 32
    data["routes"][0]["measured"] = {"all": {"quality": 0.5}}
    data["routes"].append({"name": "c", "strategy": "refine"})
    text = rewrite(SOURCE, data, "# header")
    assert yaml.safe_load(text) == data
    lines = text.splitlines()
    assert lines[:2] == ["# header", "# top comment"]
    for kept in ("# the first route", "# inline", "# ten seconds", "# the second route"):
        assert kept in text, kept
    assert "params: {n: 2, waves: [4, 4]}" in text  # still inline
    # new keys go before a mapping's last key, so the next item's heading stays with it
    assert text.index("measured:") < text.index("# the second route") < text.index("- name: b")


def test_the_calibrated_shipped_policy_round_trips_and_validates() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    ladder = cal.Escalation("confidence-ladder", True, 0.6, 0.1)
    edited = cal.apply_escalations(copy.deepcopy(data), {"lookup": ladder})
    out = rewrite(text, edited)
    assert yaml.safe_load(out) == edited
    parse_config(out)
    assert out.count("\n#") + out.count("  #") >= text.count("\n#") + text.count("  #") - 1


def test_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ValueError, match="mapping"):
        rewrite("- a\n- b\n", {})


def test_anchored_copies_keep_pointing_at_the_predictor(tmp_path: Path) -> None:
    from routing.loader import anchored, load_config

    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(yaml.safe_dump(anchored(raw, SHIPPED.parent)))
    cfg = load_config(moved)
    assert cfg.policy is not None and cfg.policy.predictor is not None
    assert Path(cfg.policy.predictor.path).is_absolute()
    assert Path(cfg.policy.predictor.path).exists()
    assert anchored({"version": 1}, tmp_path) == {"version": 1}
    assert raw == yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))  # a copy
