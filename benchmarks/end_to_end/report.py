"""The benchmark's output: tables on stdout, a JSON document, and a PNG of latency vs load."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.end_to_end.runs import (
    BASELINE_CLIENT,
    DRAMATIQ,
    DRAMATIQ_HTTP,
    DRAMATIQ_HTTP_CONFIRM,
    HTTP_BASELINES,
    MEASUREMENT_LABELS,
    OPSPAWN,
    SYSTEMS,
    RunResult,
)

TARGET_P50_MS = 5.0
TARGET_RATE = 200.0
BASELINE_TITLES = {
    DRAMATIQ_HTTP: "Dramatiq+RabbitMQ+PG via HTTP",
    DRAMATIQ_HTTP_CONFIRM: "Dramatiq+RabbitMQ+PG via HTTP, confirms",
    DRAMATIQ: "Dramatiq+RabbitMQ+PG, no HTTP (floor)",
}
RATIO_HEADS = {DRAMATIQ_HTTP: "÷http", DRAMATIQ_HTTP_CONFIRM: "÷confirm", DRAMATIQ: "÷floor"}
"""The per-configuration tables' ratio columns: Opspawn against each HTTP-fronted baseline, or
against the no-HTTP one when no HTTP baseline was measured (as in runs made before they were)."""


def _family(run: RunResult) -> str:
    if run.system == OPSPAWN:
        cluster = ", R3 cluster" if run.nats == "cluster" else ""
        return f"Opspawn sync={run.sync}{cluster}"
    return BASELINE_TITLES.get(run.system, run.system)


def _baseline_for(run: RunResult, runs: list[RunResult], system: str) -> RunResult | None:
    """The ``system`` baseline's run of the same load and process count as ``run``."""
    for other in runs:
        if (
            other.system == system
            and other.error is None
            and other.processes == run.processes
            and other.mode == run.mode
            and other.tasks_requested == run.tasks_requested
            and other.rate == run.rate
        ):
            return other
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def comparisons(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Each Opspawn run against each baseline's run of the same load and process count."""
    found = []
    for run in runs:
        if run.system != OPSPAWN or run.error is not None:
            continue
        for system in SYSTEMS:
            base = _baseline_for(run, runs, system) if system != OPSPAWN else None
            if base is None:
                continue
            found.append(
                {
                    "opspawn": run.key,
                    "baseline": base.key,
                    "baseline_system": system,
                    "completed_per_second_ratio": _ratio(
                        run.completed_per_second, base.completed_per_second
                    ),
                    "cpu_ms_per_task_ratio": _ratio(system_cpu_ms(run), system_cpu_ms(base)),
                    "p50_latency_ratio": _ratio(
                        run.latency_ms.get("p50"), base.latency_ms.get("p50")
                    ),
                    "p99_latency_ratio": _ratio(
                        run.latency_ms.get("p99"), base.latency_ms.get("p99")
                    ),
                }
            )
    return found


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def system_cpu_ms(run: RunResult) -> float:
    """CPU ms per task of the system's own processes (not the benchmark's)."""
    return sum(ms for label, ms in run.cpu_ms_per_task.items() if label not in MEASUREMENT_LABELS)


def text_report(runs: list[RunResult], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    out: list[str] = []
    cores = machine.get("cpu_count_logical") or 1
    out.append(
        f"Machine: {cores} logical cores ({machine.get('cpu_model')}), Python "
        f"{machine.get('python')}, nats-server {machine.get('nats_server')}, PostgreSQL "
        f"{machine.get('postgres')} ({machine.get('postgres_source')}), RabbitMQ "
        f"{machine.get('rabbitmq')}; load average at start {machine.get('load_average_start')}."
    )
    out.append(
        "Shared machine: other sessions' work competes for the same cores, so treat the figures "
        "as noisy (compare within one run; see each run's load average in the JSON)."
    )
    out.extend(_configuration_tables(runs))
    closed = [run for run in runs if run.mode == "closed"]
    if closed:
        out.append(f"\nClosed loop: {settings['concurrency']} concurrent clients, N tasks each run")
        out.append(
            _table(
                [
                    "N", "procs", "system", "submitted/s", "completed/s", "p50 ms", "p95 ms",
                    "p99 ms", "gen core%", "errors", "failed",
                ],
                (_closed_row(run) for run in closed),
            )
        )  # fmt: skip
        out.append(
            "gen core%: the load generator's CPU per second of submitting (100 = a whole core: "
            "then it, not the system, set the pace)."
        )
    opened = [run for run in runs if run.mode == "open"]
    if opened:
        out.append(f"\nOpen loop: a fixed rate for {settings['rate_seconds']:g} s each")
        out.append(
            _table(
                [
                    "rate/s", "procs", "system", "completed/s", "p50 ms", "p95 ms", "p99 ms",
                    "submit p50 ms", "slip p99 ms", "errors",
                ],
                (_open_row(run) for run in opened),
            )
        )  # fmt: skip
        out.append(
            "submit p50: from when a submission was due to its answer (Opspawn: the POST, which "
            "answers once the task is durable; HTTP baselines: the POST, which answers after the "
            "insert and the send; no-HTTP baseline: insert + send). slip: how late the generator "
            "sent after the schedule (large once the system falls behind and its 256 connections "
            "are all waiting)."
        )
    out.append("")
    out.extend(_cpu_tables(runs, cores))
    out.extend(_verdicts(runs))
    failures = [run for run in runs if run.error]
    if failures:
        out.append("\nRuns that did not finish (details above, on stderr):")
        out.extend(f"  {run.key}: {_last_line(run.error or '')}" for run in failures)
    restarted = [run for run in runs if run.restarts]
    if restarted:
        out.append("\nServices that crashed and were restarted during a run (see their logs):")
        out.extend(f"  {run.key}: {run.restarts}" for run in restarted)
    return "\n".join(out)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _configuration_tables(runs: list[RunResult]) -> list[str]:
    """One table per load and process count: every system's completed/s, CPU ms per task (its
    own processes, all of them) and p50/p99, and Opspawn's ratios to the HTTP-fronted baselines
    (to the no-HTTP one when neither was measured)."""
    configurations: dict[tuple[str, int, float | None, int], list[RunResult]] = {}
    for run in runs:
        shape = (run.mode, run.tasks_requested if run.mode == "closed" else 0, run.rate)
        configurations.setdefault((*shape, run.processes), []).append(run)
    measured = {run.system for run in runs}
    baselines = [system for system in HTTP_BASELINES if system in measured]
    if not baselines and DRAMATIQ in measured:
        baselines = [DRAMATIQ]
    heads = [
        f"{RATIO_HEADS[system]} {figure}"
        for system in baselines
        for figure in ("done/s", "CPU", "p50")
    ]
    out: list[str] = []
    for (mode, tasks, rate, processes), members in configurations.items():
        members.sort(key=lambda run: SYSTEMS.index(run.system))  # stable: Opspawn's as measured
        load = f"N={tasks:,}" if mode == "closed" else f"{rate:g} tasks/s"
        out.append(f"\n{'Closed' if mode == 'closed' else 'Open'} loop, {load}, x{processes}")
        rows = []
        for run in members:
            row = [
                _family(run),
                _number(run.completed_per_second, 0) if run.error is None else "failed",
                _number(system_cpu_ms(run), 2) if run.cpu_ms_per_task else "-",
                _number(run.latency_ms.get("p50")),
                _number(run.latency_ms.get("p99")),
            ]
            for system in baselines:
                base = _baseline_for(run, runs, system) if run.system == OPSPAWN else None
                row.extend(_ratios(run, base))
            rows.append(row)
        out.append(
            _table(["system", "completed/s", "CPU ms/task", "p50 ms", "p99 ms", *heads], rows)
        )
    if out:
        legend = (
            "CPU ms/task: every process of the system (shared RabbitMQ and PostgreSQL server "
            "processes included; the benchmark's own excluded)."
        )
        if baselines:
            legend += (
                " "
                + ", ".join(f"{RATIO_HEADS[s]}: / {BASELINE_TITLES[s]}" for s in baselines)
                + ", same load and process count (done/s above 1: Opspawn completes more; CPU, "
                "p50 below 1: Opspawn spends less, answers sooner)."
            )
        out.append(legend)
    return out


def _ratios(run: RunResult, base: RunResult | None) -> list[str]:
    if base is None:
        return ["", "", ""]
    return [
        _number(_ratio(run.completed_per_second, base.completed_per_second), 2),
        _number(_ratio(system_cpu_ms(run), system_cpu_ms(base)), 2),
        _number(_ratio(run.latency_ms.get("p50"), base.latency_ms.get("p50")), 2),
    ]


def _closed_row(run: RunResult) -> list[str]:
    return [
        f"{run.tasks_requested:,}",
        str(run.processes),
        _family(run),
        _number(run.submitted_per_second, 0),
        _number(run.completed_per_second, 0) if run.error is None else "failed",
        _number(run.latency_ms.get("p50")),
        _number(run.latency_ms.get("p95")),
        _number(run.latency_ms.get("p99")),
        _number(run.load_generator_core_share * 100, 0),
        str(run.submit_errors),
        str(run.failed),
    ]


def _open_row(run: RunResult) -> list[str]:
    return [
        f"{run.rate:g}",
        str(run.processes),
        _family(run),
        _number(run.completed_per_second, 0) if run.error is None else "failed",
        _number(run.latency_ms.get("p50")),
        _number(run.latency_ms.get("p95")),
        _number(run.latency_ms.get("p99")),
        _number(run.submit_latency_ms.get("p50")),
        _number(run.schedule_slip_ms.get("p99")),
        str(run.submit_errors),
    ]


def _short(run: RunResult) -> str:
    load = f"N={run.tasks_requested}" if run.mode == "closed" else f"{run.rate:g}/s"
    return f"x{run.processes} {load}"


def _cpu_tables(runs: list[RunResult], cores: int) -> list[str]:
    out = [
        "CPU ms per task, per process, from the first submission to the last completion "
        "(psutil user+system; 'xk' = k runner or worker processes):"
    ]
    families: dict[str, list[RunResult]] = {}
    for run in runs:
        if run.error is None and run.cpu_ms_per_task:
            unit, plural = ("runner", "s") if run.system == OPSPAWN else ("worker process", "es")
            name = f"{_family(run)}, {run.processes} {unit}{plural if run.processes > 1 else ''}"
            families.setdefault(name, []).append(run)
    for family, members in families.items():
        labels: list[str] = []
        for run in members:
            labels.extend(label for label in run.cpu_ms_per_task if label not in labels)
        system_labels = sorted(label for label in labels if label not in MEASUREMENT_LABELS)
        measurement = sorted(label for label in labels if label in MEASUREMENT_LABELS)
        rows = [
            [label, *(_number(run.cpu_ms_per_task.get(label), 3) for run in members)]
            for label in system_labels
        ]
        rows.append(["Σ system", *(_number(system_cpu_ms(run), 3) for run in members)])
        rows.append(
            [
                f"→ CPU-bound ceiling on {cores} cores, tasks/s",
                *(_number(cores * 1000 / max(system_cpu_ms(run), 1e-9), 0) for run in members),
            ]
        )
        rows.extend(
            [label, *(_number(run.cpu_ms_per_task.get(label), 3) for run in members)]
            for label in measurement
        )
        out.append(f"\n{family}")
        out.append(_table(["process", *(_short(run) for run in members)], rows))
    out.append(
        f"('{BASELINE_CLIENT}' is the no-HTTP baseline's load generator doing the old system's "
        "client work, the pending row and the publish, so it counts in that baseline's total, as "
        "the gateway does in Opspawn's and the FastAPI app in the HTTP baselines'; their load "
        "generators only send HTTP requests. Processes marked shared also served other work on "
        "the machine.)"
    )
    return out


def _verdicts(runs: list[RunResult]) -> list[str]:
    out = ["", "Against the issue's goals:"]
    for run in runs:
        if run.system == OPSPAWN and run.mode == "open" and run.rate == TARGET_RATE:
            p50 = run.latency_ms.get("p50")
            verdict = "met" if p50 is not None and p50 <= TARGET_P50_MS else "NOT met"
            out.append(
                f"  p50 at {TARGET_RATE:g} tasks/s, {_family(run)}, x{run.processes}: "
                f"{_number(p50, 2)} ms (target ≤ {TARGET_P50_MS:g} ms: {verdict})"
            )
    for comparison in comparisons(runs):
        ratio = comparison["completed_per_second_ratio"]
        if "N=" not in comparison["opspawn"] or ratio is None:
            continue
        verdict = "2x goal met" if ratio >= 2 else "matches" if ratio >= 1 else "BELOW baseline"
        out.append(
            f"  completed/s {comparison['opspawn']}: {ratio:.2f}x "
            f"{comparison['baseline_system']} ({verdict})"
        )
    return out


def write_json(
    path: Path, runs: list[RunResult], machine: dict[str, Any], settings: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "benchmarks.end_to_end",
        "machine": machine,
        "settings": settings,
        "runs": [run.as_json() | {"system_cpu_ms_per_task": system_cpu_ms(run)} for run in runs],
        "comparisons": comparisons(runs),
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def write_plot(path: Path, runs: list[RunResult]) -> bool:
    """Latency percentiles against load, one colour per system and process count: a line
    through its open-loop runs (x = the offered rate) and a star per closed-loop run (x = the
    completions/s it reached, the most it could do with that many clients). ``False`` if there
    was nothing to plot."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[RunResult]] = {}
    for run in runs:
        if run.error is None and run.latency_ms:
            series.setdefault(f"{_family(run)} x{run.processes}", []).append(run)
    if not series:
        return False
    figure, axes = plt.subplots(1, 3, figsize=(16, 6), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, percentile in zip(axes, ("p50", "p95", "p99"), strict=True):
        for number, (name, members) in enumerate(sorted(series.items())):
            colour = colours[number % len(colours)]
            style = "-" if name.startswith("Opspawn sync=always") else (
                "--" if name.startswith("Opspawn") else ":"
            )  # fmt: skip
            opened = sorted((run for run in members if run.mode == "open"), key=_rate)
            closed = [run for run in members if run.mode == "closed"]
            axis.plot(
                [_rate(run) for run in opened],
                [run.latency_ms[percentile] for run in opened],
                style,
                marker="o",
                color=colour,
                label=name if axis is axes[0] else None,
            )
            axis.plot(
                [run.completed_per_second for run in closed],
                [run.latency_ms[percentile] for run in closed],
                "*",
                markersize=11,
                color=colour,
            )
        axis.set_title(f"{percentile} submit → completed")
        axis.set_xlabel("tasks/s: offered (open loop, o) or reached (closed loop, *)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency, ms (log scale)")
    axes[0].axhline(TARGET_P50_MS, color="grey", linewidth=0.8)
    axes[0].annotate(
        f"target p50 {TARGET_P50_MS:g} ms at {TARGET_RATE:g}/s",
        (TARGET_RATE, TARGET_P50_MS),
        fontsize=7,
        color="grey",
    )
    figure.legend(loc="lower center", ncol=min(len(series), 4), fontsize=8)
    figure.suptitle("Opspawn vs Dramatiq + RabbitMQ + PostgreSQL: latency vs load")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _rate(run: RunResult) -> float:
    return run.rate or 0.0
