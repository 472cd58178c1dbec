"""``uv run python -m benchmarks.message_floor``: see :mod:`benchmarks.message_floor.traffic`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from benchmarks.message_floor.traffic import BASELINE, PATHS, measure, report
from benchmarks.message_floor.traffic import __doc__ as DESCRIPTION


def main() -> None:
    parser = argparse.ArgumentParser(description=(DESCRIPTION or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000])
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sync", nargs="+", choices=["always", "default"], default=["default"])
    parser.add_argument(
        "--path",
        nargs="+",
        choices=PATHS,
        default=[BASELINE, "lean"],
        help=f"the traffic: lean today's, v4, v3, v2 and v1 before it ({BASELINE} is the baseline)",
    )
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    options = parser.parse_args()
    figures = []
    with tempfile.TemporaryDirectory(prefix="message-floor-") as workdir:
        for sync in options.sync:
            for runners in options.runners:
                for tasks in options.tasks:
                    for path in options.path:
                        store = Path(workdir) / f"{sync}-{runners}-{tasks}-{path}"
                        figures.append(measure(tasks, runners, sync, store, path))
    report(figures)
    if options.output is not None:
        rows = [
            {**dataclasses.asdict(row), "completed_per_second": row.tasks / row.seconds}
            for row in figures
        ]
        options.output.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
