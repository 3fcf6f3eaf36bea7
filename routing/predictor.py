"""The learned per-route success predictor: P(route answers correctly | request).

Features: hashed word 1-2-grams and char 2-4-grams (two ``HashingVectorizer`` blocks, each
L2-normalised, ``alternate_sign=False``) followed by a small numeric block (log counts of
digits, numbers and arithmetic operators between numbers, and a one-hot length bucket). One
logistic regression per route; a route whose training outcomes are all equal gets a constant,
Laplace-smoothed rate instead. A text longer than ``MAX_CHARS`` is featurised as its head and
tail (the cost grows with the length: about 0.7 µs per character). The artefact is plain JSON (sparse weights, no pickle), and
prediction needs neither the training data nor a fitted sklearn model: the vectorizers are
stateless and the logistic function is computed here with numpy.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sklearn
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import murmurhash3_32

VECTORIZER_PARAMS: dict[str, dict[str, Any]] = {
    "word": {"analyzer": "word", "ngram_range": [1, 2], "lowercase": True, "norm": "l2"},
    "char": {"analyzer": "char_wb", "ngram_range": [2, 4], "lowercase": True, "norm": "l2"},
}
MAX_CHARS = 2048  # longer texts: features of the first quarter + the last three quarters
LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048)  # chars; one-hot: < each edge, then ≥ last
NUMERIC_FEATURES = (
    "log_digits",
    "log_numbers",
    "log_operators",
    *(f"len_lt_{edge}" for edge in LENGTH_BUCKETS),
    f"len_ge_{LENGTH_BUCKETS[-1]}",
)
_CACHE_LIMIT = 1 << 18  # token → column memo entries
_PROBE = "What is 12 + 7? Answer: (B) — naïve café, 3.5 km; x*y=z."
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPERATOR = re.compile(r"(?<=[\d)])\s*[-+*/×÷^=]\s*(?=[\d(])")


class PredictorError(Exception):
    """A predictor artefact is missing, corrupt or of another format, or a route is unknown."""


def request_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The whole conversation as one text: ``role: content`` per message (string contents and
    the text parts of list contents), joined by newlines."""
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, Mapping)]
            content = "\n".join(t for t in texts if isinstance(t, str))
        elif not isinstance(content, str):
            content = ""
        lines.append(f"{message.get('role', '')}: {content}")
    return "\n".join(lines)


def numeric_features(text: str) -> list[float]:
    """The numeric block, in ``NUMERIC_FEATURES`` order."""
    digits = sum(c.isdigit() for c in text)
    counts = (digits, len(_NUMBER.findall(text)), len(_OPERATOR.findall(text)))
    bucket = next(
        (k for k, edge in enumerate(LENGTH_BUCKETS) if len(text) < edge), len(LENGTH_BUCKETS)
    )
    onehot = [1.0 if k == bucket else 0.0 for k in range(len(LENGTH_BUCKETS) + 1)]
    return [math.log1p(c) for c in counts] + onehot


class _Features:
    """Text → (indices, values) of the sparse feature vector of width ``width``.

    ``sparse`` reproduces ``HashingVectorizer.transform`` (the same analyzer, the same
    murmurhash3 index, counts, then the norm) without sklearn's per-call validation, which
    would cost most of the prediction time; ``matches_sklearn`` checks the equivalence.
    """

    def __init__(
        self, n_features: int, params: Mapping[str, Mapping[str, Any]], max_chars: int
    ) -> None:
        self.n_features = n_features
        self.max_chars = max_chars
        self.blocks = []
        for name in ("word", "char"):
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params[name].items()}
            self.blocks.append(
                HashingVectorizer(n_features=n_features, alternate_sign=False, **kwargs)
            )
        self.width = 2 * n_features + len(NUMERIC_FEATURES)
        self._analyzers = [b.build_analyzer() for b in self.blocks]
        self._cache: dict[str, int] = {}  # token → column; the hash does not depend on the block

    def matrix(self, texts: Sequence[str]) -> Any:
        """Feature rows of ``texts`` as a sparse matrix (sklearn's own path, for training)."""
        numeric = FunctionTransformer(
            lambda ts: np.array([numeric_features(t) for t in ts], dtype=np.float64)
        )
        union = FeatureUnion([("word", self.blocks[0]), ("char", self.blocks[1]), ("num", numeric)])
        return union.fit_transform([self.clip(t) for t in texts])

    def clip(self, text: str) -> str:
        """``text``, or its head and tail when longer than ``max_chars`` (bounds the cost)."""
        if len(text) <= self.max_chars:
            return text
        head = self.max_chars // 4
        return text[:head] + "\n" + text[len(text) - (self.max_chars - head - 1) :]

    def _column(self, token: str) -> int:
        h = int(murmurhash3_32(token, seed=0))
        n = self.n_features
        column = (2147483647 - (n - 1)) % n if h == -(2**31) else abs(h) % n
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[token] = column
        return column

    def sparse(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, values) of one text's row."""
        idx, val = [], []
        cache = self._cache
        text = self.clip(text)
        for k, (analyze, block) in enumerate(zip(self._analyzers, self.blocks, strict=True)):
            hashed = [cache[t] if t in cache else self._column(t) for t in analyze(text)]
            columns, counts = np.unique(np.asarray(hashed, dtype=np.int64), return_counts=True)
            values = counts.astype(np.float64)
            if block.binary:
                values[:] = 1.0
            total = {"l2": math.sqrt(float(values @ values)), "l1": float(values.sum())}.get(
                block.norm, 1.0
            )
            idx.append(columns + k * self.n_features)
            val.append(values / total if total > 0 else values)
        idx.append(np.arange(2 * self.n_features, self.width))
        val.append(np.asarray(numeric_features(text), dtype=np.float64))
        return np.concatenate(idx), np.concatenate(val)

    def matches_sklearn(self, text: str) -> bool:
        """Whether ``sparse(text)`` equals sklearn's row for ``text`` (up to rounding)."""
        expected = np.asarray(self.matrix([text]).todense()).ravel()
        indices, values = self.sparse(text)
        got = np.zeros(self.width)
        np.add.at(got, indices, values)
        return bool(np.allclose(got, expected, rtol=1e-12, atol=1e-15))


class Predictor:
    """Per-route logistic models over shared hashed features; see the module docstring."""

    FORMAT: ClassVar[int] = 1

    def __init__(
        self,
        n_features: int,
        vectorizer: Mapping[str, Mapping[str, Any]],
        max_chars: int,
        models: Mapping[str, tuple[float, Sequence[tuple[int, float]]] | float],
        trained_on: int,
    ) -> None:
        """``models``: route → (intercept, sparse [(index, weight)]) or a constant P(correct)."""
        self.features = _Features(n_features, vectorizer, max_chars)
        self.vectorizer = {k: dict(v) for k, v in vectorizer.items()}
        self.routes: tuple[str, ...] = tuple(models)
        self.trained_on = trained_on
        self._models = dict(models)
        fitted = {r: m for r, m in models.items() if isinstance(m, tuple)}
        self._constants = {r: m for r, m in models.items() if not isinstance(m, tuple)}
        self._fitted = tuple(fitted)
        self._weights = np.zeros((self.features.width, len(fitted)), dtype=np.float64)
        self._intercepts = np.zeros(len(fitted), dtype=np.float64)
        for j, (intercept, coef) in enumerate(fitted.values()):
            self._intercepts[j] = intercept
            for index, weight in coef:
                self._weights[index, j] = weight

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        outcomes: Mapping[str, Sequence[bool]],
        *,
        n_features: int = 2**14,
        seed: int = 0,
    ) -> Predictor:
        """Fit one model per route on ``texts`` (``outcomes[route][i]``: route answered text i
        correctly). ``ValueError`` on empty or mismatched input."""
        if not texts or not outcomes:
            raise ValueError("need at least one text and one route")
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        for route, ys in outcomes.items():
            if not isinstance(route, str) or not route:
                raise ValueError(f"route names must be non-empty strings, got {route!r}")
            if len(ys) != len(texts):
                raise ValueError(f"route {route!r}: {len(ys)} outcomes for {len(texts)} texts")
        features = _Features(n_features, VECTORIZER_PARAMS, MAX_CHARS)
        x = features.matrix(texts)
        models: dict[str, tuple[float, list[tuple[int, float]]] | float] = {}
        for route, ys in outcomes.items():
            y = np.fromiter((bool(v) for v in ys), dtype=bool, count=len(ys))
            if y.all() or not y.any():
                models[route] = (float(y.sum()) + 1.0) / (len(y) + 2.0)
                continue
            model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
            model.fit(x, y)
            coef = model.coef_[0]
            nonzero = np.flatnonzero(coef)
            models[route] = (
                float(model.intercept_[0]),
                [(int(i), float(coef[i])) for i in nonzero],
            )
        return cls(n_features, VECTORIZER_PARAMS, MAX_CHARS, models, len(texts))

    def predict(self, text: str, routes: Sequence[str] | None = None) -> dict[str, float]:
        """P(correct) in [0, 1] per route (all routes, or ``routes``: ``PredictorError`` when
        one is unknown)."""
        if routes is not None:
            unknown = [r for r in routes if r not in self._models]
            if unknown:
                raise PredictorError(f"unknown routes {unknown}; known: {list(self.routes)}")
        indices, values = self.features.sparse(text)
        logits = values @ self._weights[indices] + self._intercepts
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, overflow-free
        fitted = dict(zip(self._fitted, probs.tolist(), strict=True))
        return {
            r: fitted.get(r, self._constants.get(r, 0.0))
            for r in (self.routes if routes is None else routes)
        }

    def to_json(self) -> dict[str, Any]:
        """The artefact as a JSON-ready dict (see ``save``)."""
        routes: dict[str, Any] = {}
        for route, model in self._models.items():
            if isinstance(model, tuple):
                routes[route] = {"intercept": model[0], "coef": [[i, w] for i, w in model[1]]}
            else:
                routes[route] = {"constant": model}
        return {
            "format": self.FORMAT,
            "n_features": self.features.n_features,
            "vectorizer": {
                **self.vectorizer,
                "numeric": list(NUMERIC_FEATURES),
                "max_chars": self.features.max_chars,
            },
            "routes": routes,
            "trained_on": self.trained_on,
            "sklearn": sklearn.__version__,
        }

    def save(self, path: str | Path) -> None:
        """Write the JSON artefact (atomically: a temporary file, then a rename)."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Read an artefact written by ``save``; ``PredictorError`` naming the path and the
        problem when it is missing, unreadable, not JSON, of another format or corrupt."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise PredictorError(f"{path}: cannot read predictor: {e.strerror or e}") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PredictorError(f"{path}: not a predictor (invalid JSON: {e})") from e
        try:
            return cls.from_json(data)
        except PredictorError as e:
            raise PredictorError(f"{path}: {e}") from e

    @classmethod
    def from_json(cls, data: Any) -> Predictor:
        """Validate and rebuild an artefact dict; ``PredictorError`` on any problem."""
        if not isinstance(data, dict):
            raise PredictorError("not a predictor (expected a JSON object)")
        if data.get("format") != cls.FORMAT:
            raise PredictorError(
                f"predictor format {data.get('format')!r} is not supported (expected {cls.FORMAT})"
            )
        n, vec, trained_on = data.get("n_features"), data.get("vectorizer"), data.get("trained_on")
        for key, value in (("n_features", n), ("trained_on", trained_on)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PredictorError(f"corrupt predictor: '{key}' must be an integer >= 0")
        assert isinstance(n, int) and isinstance(trained_on, int)
        if not isinstance(vec, dict) or vec.get("numeric") != list(NUMERIC_FEATURES):
            raise PredictorError("corrupt predictor: 'vectorizer' does not match this version")
        max_chars = vec.get("max_chars")
        if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 16:
            raise PredictorError("corrupt predictor: 'vectorizer.max_chars' must be an int >= 16")
        params: dict[str, dict[str, Any]] = {}
        for block in ("word", "char"):
            if not isinstance(vec.get(block), dict):
                raise PredictorError(f"corrupt predictor: 'vectorizer' lacks '{block}' params")
            params[block] = vec[block]
        models = _parse_routes(data.get("routes"), 2 * n + len(NUMERIC_FEATURES))
        try:
            predictor = cls(n, params, max_chars, models, trained_on)
            supported = predictor.features.matches_sklearn(_PROBE)  # sklearn validates params
        except (TypeError, ValueError) as e:
            raise PredictorError(f"corrupt predictor: bad vectorizer parameters: {e}") from e
        if not supported:
            raise PredictorError("unsupported vectorizer parameters (fast path differs)")
        return predictor


def _parse_routes(
    routes: Any, width: int
) -> dict[str, tuple[float, list[tuple[int, float]]] | float]:
    """The ``routes`` section as ``Predictor`` models; ``PredictorError`` naming the route."""
    if not isinstance(routes, dict) or not routes:
        raise PredictorError("corrupt predictor: 'routes' must be a non-empty object")
    models: dict[str, tuple[float, list[tuple[int, float]]] | float] = {}
    for route, spec in routes.items():
        where = f"corrupt predictor: route {route!r}"
        if isinstance(spec, dict) and set(spec) == {"constant"}:
            p = spec["constant"]
            if not _is_number(p) or not 0.0 <= p <= 1.0:
                raise PredictorError(f"{where}: 'constant' must be a number in [0, 1]")
            models[route] = float(p)
            continue
        if not isinstance(spec, dict) or set(spec) != {"intercept", "coef"}:
            raise PredictorError(f"{where}: needs 'intercept' and 'coef', or 'constant'")
        if not _is_number(spec["intercept"]) or not isinstance(spec["coef"], list):
            raise PredictorError(f"{where}: 'intercept' must be a number and 'coef' a list")
        coef: list[tuple[int, float]] = []
        for entry in spec["coef"]:
            ok = isinstance(entry, list) and len(entry) == 2 and _is_number(entry[1])
            if not ok or not isinstance(entry[0], int) or not 0 <= entry[0] < width:
                raise PredictorError(f"{where}: bad coef entry {entry!r}")
            coef.append((entry[0], float(entry[1])))
        models[route] = (float(spec["intercept"]), coef)
    return models


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
