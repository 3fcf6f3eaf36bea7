"""Accuracy-vs-compute plots of a calibration run (matplotlib, Agg backend: no display)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from routing.calibration import ALL, Cell  # noqa: E402


def plot_file_name(request_class: str) -> str:
    """``accuracy-<class>.png`` with anything but ``[A-Za-z0-9._-]`` replaced."""
    return f"accuracy-{re.sub(r'[^A-Za-z0-9._-]', '_', request_class)}.png"


def plot_accuracy(
    cells: Sequence[Cell],
    out_dir: Path,
    chosen: Mapping[str, int | None] | None = None,
    heldout: Sequence[Cell] = (),
) -> list[Path]:
    """One PNG per class (``all`` first): accuracy (with its 95 % CI) against mean generated
    tokens, one line per route across its budgets; chosen budgets circled. ``heldout`` cells
    (``auto`` and its cheap route on held-out items) are drawn as stars."""
    marks: dict[str, list[Cell]] = defaultdict(list)
    for c in heldout:
        marks[c.request_class].append(c)
    by_class: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_class[c.request_class].append(c)
    paths: list[Path] = []
    for request_class in sorted(by_class, key=lambda k: (k != ALL, k)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        routes: dict[str, list[Cell]] = defaultdict(list)
        for c in by_class[request_class]:
            routes[c.route].append(c)
        for route, rc in sorted(routes.items()):
            rc.sort(key=lambda c: c.mean_generated)
            xs = [c.mean_generated for c in rc]
            ys = [c.accuracy for c in rc]
            err = [[c.accuracy - c.ci_low for c in rc], [c.ci_high - c.accuracy for c in rc]]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=route)
            for c in rc:
                ax.annotate(
                    str(c.budget), (c.mean_generated, c.accuracy), fontsize=7, xytext=(3, 3),
                    textcoords="offset points",
                )  # fmt: skip
                if chosen is not None and chosen.get(route) == c.budget:
                    ax.plot(
                        [c.mean_generated], [c.accuracy], marker="o", markersize=12,
                        fillstyle="none", color=line.lines[0].get_color(),
                    )  # fmt: skip
        for c in marks.get(request_class, []):
            ax.errorbar(
                [c.mean_generated], [c.accuracy],
                yerr=[[c.accuracy - c.ci_low], [c.ci_high - c.accuracy]],
                marker="*", markersize=13, capsize=3, linestyle="none",
                label=f"{c.route} (held-out, {c.items} items)",
            )  # fmt: skip
        n = max((c.items for c in by_class[request_class]), default=0)
        ax.set_title(f"class {request_class} ({n} items): accuracy vs compute")
        ax.set_xlabel("mean generated tokens per request (visible + hidden)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / plot_file_name(request_class)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
