"""Write an edited policy file back with its comments, key order and flow style kept.

Calibration computes the new policy as plain data (``routing.calibration.updated_config``);
``rewrite`` merges that data into a round-trip parse of the original text (ruamel.yaml), so a
calibrated ``routes.yaml`` keeps every knob comment of the file it came from. Mappings merge
key by key (keys only the original has are kept), lists of named items (routes, backends)
merge by ``name``, anything else is replaced.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 100
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _named(items: Sequence[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def _styled(node: CommentedMap | CommentedSeq, new: Any) -> Any:
    """``new`` (plain data) as a node of ``node``'s flow style (``[a, b]`` stays inline)."""
    out: CommentedMap | CommentedSeq = (
        CommentedSeq(new) if isinstance(new, list) else CommentedMap(new)
    )
    if node.fa.flow_style():
        out.fa.set_flow_style()
    return out


def _merge(node: Any, new: Any) -> Any:
    """``new`` merged into the round-trip ``node``: the node itself (edited in place) where
    it can be kept, so its comments stay; else ``new``."""
    if node == new:
        return node
    if isinstance(node, CommentedMap) and isinstance(new, Mapping):
        for key, value in new.items():
            if key in node:
                node[key] = _merge(node[key], value)
            elif len(node) and not node.fa.flow_style():
                # before the last key: the comment after a block mapping (the next item's
                # heading) is attached to its last key and must stay last
                node.insert(len(node) - 1, key, value)
            else:
                node[key] = value
        return node
    if isinstance(node, CommentedSeq) and isinstance(new, list):
        if (
            _named(node)
            and _named(new)
            and [i["name"] for i in node] == [i["name"] for i in new[: len(node)]]
        ):
            for k, item in enumerate(new):
                if k < len(node):
                    node[k] = _merge(node[k], item)
                else:
                    node.append(item)
            return node
        return _styled(node, new)
    if isinstance(node, CommentedMap | CommentedSeq) and isinstance(new, Mapping | list):
        return _styled(node, new)
    return new


def rewrite(source: str, updated: Mapping[str, Any], header: str | None = None) -> str:
    """``source`` (a policy file's text) with ``updated`` merged in; ``header`` (comment lines,
    each starting with ``#``) goes first when given."""
    y = _yaml()
    doc = y.load(source)
    if not isinstance(doc, CommentedMap):
        raise ValueError("a policy file is a YAML mapping")
    _merge(doc, dict(updated))
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    return f"{header.rstrip()}\n{text}" if header else text
