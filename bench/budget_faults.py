"""Figures of the Redis fault scenarios: what clients see while Redis is killed or paused.

Runs the scenarios of tests/integration/test_budget_faults.py (real gateway processes, a
throwaway redis-server, the mock backend; 50 staggered requests per run, half of them
streams) ``--runs`` times each, checks their invariants exactly as the tests do, and prints
per scenario: answers by status, the slowest 503 and 200, how long after the fault Redis
held exactly the usage clients were shown, and the peak of the tenant's counter (settled +
held) during the load. Writes bench/results/budget_faults.json.

    python bench/budget_faults.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.integration import test_budget_faults as faults  # noqa: E402

Scenario = Callable[[Path], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "kill -9 + restart, 1 gateway": lambda d: faults.run_scenario(d, faults.restart, 1, True),
    "SIGSTOP 1.5 s, 1 gateway, closed": lambda d: faults.run_scenario(d, faults.pause, 1, False),
    "SIGSTOP 1.5 s, 1 gateway, open": lambda d: faults.run_scenario(
        d, faults.pause, 1, False, "open"
    ),
    "no fault, 2 gateways": lambda d: faults.run_scenario(d, faults.no_fault, 2, False),
    "kill -9 + restart, 2 gateways": lambda d: faults.run_scenario(d, faults.restart, 2, True),
}
COLUMNS = (
    "ok",
    "rate_limited_429",
    "store_unavailable_503",
    "max_503_s",
    "max_200_s",
    "settled_s_after_fault",
    "peak_committed_tokens",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="Runs of each scenario.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/budget_faults.json")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, scenario in SCENARIOS.items():
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="deliberate-faults-") as tmp:
                results.setdefault(name, []).append(scenario(Path(tmp)))
    header = f"{'scenario':34}" + "".join(f"{c:>24}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, runs in results.items():
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in runs]
            cells.append(f"{statistics.median(values):.4g} (max {max(values):.4g})")
        lines.append(f"{name:34}" + "".join(f"{c:>24}" for c in cells))
    sys.stdout.write(
        f"{args.runs} runs per scenario, {faults.REQUESTS} requests each; median (max); every "
        "run kept the invariants (Redis total = usage shown, no open reservation)\n"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"runs": args.runs, "requests_per_run": faults.REQUESTS, "scenarios": results}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.out}\n")


if __name__ == "__main__":
    main()
