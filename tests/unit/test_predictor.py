"""routing/predictor.py: training, prediction, the JSON artefact and its errors."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routing.predictor import (
    MAX_CHARS,
    NUMERIC_FEATURES,
    Predictor,
    PredictorError,
    numeric_features,
    request_text,
)

WORDS = "the a shop sells apples pears cost how many much what is colour blue red tree".split()


def _texts(n: int, seed: int) -> tuple[list[str], list[bool]]:
    """Half the texts contain numbers, half do not (alternating)."""
    rng = random.Random(seed)
    texts, digits = [], []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(6, 14))
        if i % 2 == 0:
            for _ in range(rng.randint(1, 3)):
                words.insert(rng.randrange(len(words)), str(rng.randint(1, 999)))
            words.insert(rng.randrange(len(words)), rng.choice("+-*"))
        texts.append("user: " + " ".join(words) + "?")
        digits.append(i % 2 == 0)
    return texts, digits


def _auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def trained() -> Predictor:
    texts, digits = _texts(240, seed=1)
    outcomes = {
        "A": digits,  # succeeds on texts with digits
        "B": [not d for d in digits],  # succeeds on texts without
        "always": [True] * len(texts),
        "never": [False] * len(texts),
    }
    return Predictor.train(texts, outcomes, seed=0)


def test_predictions_separate_the_routes_on_held_out_texts(trained: Predictor) -> None:
    texts, digits = _texts(120, seed=99)
    preds = [trained.predict(t) for t in texts]
    assert _auc([p["A"] for p in preds], digits) > 0.95
    assert _auc([p["B"] for p in preds], [not d for d in digits]) > 0.95
    with_digits = [p for p, d in zip(preds, digits, strict=True) if d]
    assert np.mean([p["A"] for p in with_digits]) > np.mean([p["B"] for p in with_digits])
    for p in preds:
        assert set(p) == {"A", "B", "always", "never"}
        assert all(0.0 <= v <= 1.0 for v in p.values())


def test_constant_routes_get_the_laplace_rate(trained: Predictor) -> None:
    for text in ("no digits here", "What is 2 + 2?", ""):
        p = trained.predict(text)
        assert p["always"] == pytest.approx(241 / 242)
        assert p["never"] == pytest.approx(1 / 242)
    assert trained.to_json()["routes"]["always"] == {"constant": 241 / 242}


def test_route_order_and_subset(trained: Predictor) -> None:
    assert trained.routes == ("A", "B", "always", "never")
    assert list(trained.predict("x", routes=["never", "A"])) == ["never", "A"]
    with pytest.raises(PredictorError, match="unknown routes"):
        trained.predict("x", routes=["A", "nope"])


def test_save_load_round_trip(trained: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "predictor.json"
    trained.save(path)
    loaded = Predictor.load(path)
    texts, _ = _texts(30, seed=5)
    for text in texts:
        assert loaded.predict(text) == trained.predict(text)
    assert loaded.routes == trained.routes
    assert loaded.to_json() == trained.to_json()
    assert [p.name for p in tmp_path.iterdir()] == ["predictor.json"]  # no temporary left over


def test_artefact_is_sparse_json(trained: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    trained.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == 1
    assert data["n_features"] == 2**14
    assert data["trained_on"] == 240
    assert data["vectorizer"]["numeric"] == list(NUMERIC_FEATURES)
    assert data["vectorizer"]["word"]["ngram_range"] == [1, 2]
    assert data["vectorizer"]["char"]["ngram_range"] == [2, 4]
    assert isinstance(data["sklearn"], str)
    route = data["routes"]["A"]
    assert isinstance(route["intercept"], float)
    assert 0 < len(route["coef"]) < 2 * 2**14  # nonzero entries only
    assert all(w != 0 and 0 <= i < 2 * 2**14 + len(NUMERIC_FEATURES) for i, w in route["coef"])


def test_fast_features_match_sklearn(trained: Predictor) -> None:
    texts, _ = _texts(20, seed=3)
    for text in [*texts, "", "ÄÖü naïve 你好 🙂 3/4 = 0.75", "a\nb\tc " * 40]:
        assert trained.features.matches_sklearn(text), text


def test_long_text_is_clipped_to_head_and_tail(trained: Predictor) -> None:
    long_text = "What is 2 + 2? " + "filler words here " * 3000 + " and 7 * 8 at the end"
    clipped = trained.features.clip(long_text)
    assert len(clipped) == MAX_CHARS
    assert clipped.startswith("What is 2 + 2?") and clipped.endswith("7 * 8 at the end")
    assert trained.predict(long_text) == trained.predict(clipped)
    assert trained.features.clip("short") == "short"
    assert trained.to_json()["vectorizer"]["max_chars"] == MAX_CHARS


def test_extreme_weights_stay_in_range(trained: Predictor) -> None:
    data = trained.to_json()
    data["routes"]["A"]["intercept"] = 1e6
    data["routes"]["B"]["intercept"] = -1e6
    p = Predictor.from_json(data).predict("anything 1 + 2")
    assert p["A"] == 1.0 and p["B"] == 0.0


# --- errors ----------------------------------------------------------------------------------


def test_wrong_format_version(trained: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**trained.to_json(), "format": 2}), encoding="utf-8")
    with pytest.raises(PredictorError, match=rf"{path}: predictor format 2 is not supported"):
        Predictor.load(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\xff garbage \x80", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"format": 1}', "n_features"),
    ],
)
def test_garbage(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(PredictorError, match=problem) as info:
        Predictor.load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="cannot read predictor"):
        Predictor.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"intercept": 0.1, "coef": [[10**9, 0.5]]}, "bad coef entry"),
        ({"intercept": 0.1, "coef": [["x", 0.5]]}, "bad coef entry"),
        ({"intercept": "high", "coef": []}, "'intercept' must be a number"),
        ({"constant": 1.5}, "'constant' must be a number in"),
        ({"weights": []}, "needs 'intercept' and 'coef'"),
    ],
)
def test_corrupt_route(trained: Predictor, route: dict[str, object], problem: str) -> None:
    data = trained.to_json()
    data["routes"]["A"] = route
    with pytest.raises(PredictorError, match=f"route 'A': {problem}"):
        Predictor.from_json(data)


def test_corrupt_vectorizer(trained: Predictor) -> None:
    data = trained.to_json()
    data["vectorizer"]["word"] = {"analyzer": "sentences"}
    with pytest.raises(PredictorError, match="vectorizer"):
        Predictor.from_json(data)
    data = trained.to_json()
    data["vectorizer"]["numeric"] = ["log_digits"]
    with pytest.raises(PredictorError, match="does not match this version"):
        Predictor.from_json(data)


def test_train_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 outcomes for 3 texts"):
        Predictor.train(["a", "b", "c"], {"r": [True, False]})
    with pytest.raises(ValueError):
        Predictor.train([], {"r": []})
    with pytest.raises(ValueError):
        Predictor.train(["a"], {})


# --- features ----------------------------------------------------------------------------------


def test_request_text_whole_conversation() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is 2 + 2?"},
                {"type": "image_url", "image_url": {"url": "http://x"}},
                {"type": "text", "text": "Thanks."},
            ],
        },
        {"role": "assistant", "content": None},
    ]
    assert request_text(messages) == (
        "system: Be brief.\nuser: What is 2 + 2?\nThanks.\nassistant: "
    )


def test_numeric_features() -> None:
    values = dict(zip(NUMERIC_FEATURES, numeric_features("What is 23 + 48 - 17?"), strict=True))
    assert values["log_digits"] == pytest.approx(np.log1p(6))
    assert values["log_numbers"] == pytest.approx(np.log1p(3))
    assert values["log_operators"] == pytest.approx(np.log1p(2))
    assert values["len_lt_64"] == 1.0
    assert sum(v for k, v in values.items() if k.startswith("len_")) == 1.0
    assert numeric_features("x" * 5000)[-1] == 1.0
