"""A bench run as a Markdown report and a PNG plot (latency vs batch size, throughput per backend/precision).

Both are drawn from the same `BenchReport` the table and the JSON come from, so the picture always
shows what the table says. Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_deploy import registry
from resnet_deploy.atomic import atomic_path, write_text
from resnet_deploy.bench.scenario_report import scenario_markdown
from resnet_deploy.bench.timing import CV_WARN_THRESHOLD, INTERLEAVING, ROUND_SPREAD_LIMIT, BenchReport, BenchResult

BACKEND_COLORS = {b.name: b.color for b in registry.backends()}
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
PRECISION_LINES = {"fp32": "-", "fp16": "--", "bf16": "-.", "int8": ":"}
BACKEND_ORDER = registry.backend_names()  # the table's order is the registry's (and `--backends`' help)
PRECISION_ORDER = registry.precision_names()


def series_key(result: BenchResult) -> tuple[int, int, str, str]:
    """Sort rows as the table shows them: backend, then precision (known ones first)."""
    b = BACKEND_ORDER.index(result.backend) if result.backend in BACKEND_ORDER else len(BACKEND_ORDER)
    p = PRECISION_ORDER.index(result.precision) if result.precision in PRECISION_ORDER else len(PRECISION_ORDER)
    return (b, p, result.backend, result.precision)


def ordered_results(results: Sequence[BenchResult]) -> list[BenchResult]:
    return sorted(results, key=lambda r: (r.model, r.batch_size, series_key(r), r.artifact or ""))


def models_of(report: BenchReport) -> list[str]:
    seen: dict[str, None] = {}
    for item in [*report.results, *report.skipped]:
        seen.setdefault(item.model, None)
    return list(seen)


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def fmt_speedup(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


# Terminal table columns: (header, wide only). The default set fits 100 columns; `--wide` shows all.
TABLE_COLUMNS = (("backend", False), ("prec.", False), ("batch", False), ("mean", False), ("std", True),
                 ("p50", False), ("p90", True), ("p95", True), ("p99", False), ("min", True), ("max", True),
                 ("CV", False), ("img/s", False), ("vs torch\nfp32", False))
# Left out, in this order, when the terminal is too narrow for the default set.
NARROW_DROPS = ("img/s", "CV", "p99")


def artifact_tags(rows: Sequence[BenchResult]) -> dict[str | None, str]:
    """A short name for each artifact that shares its model, backend and precision with another artifact
    (full and mixed INT8 of one model): the file name, or parent/name when the names are the same too."""
    by_case: dict[tuple[str, str, str], set[str | None]] = {}
    for r in rows:
        by_case.setdefault((r.model, r.backend, r.precision), set()).add(r.artifact)
    shared = {a for artifacts in by_case.values() if len(artifacts) > 1 for a in artifacts if a}
    names = [Path(a).name for a in shared]
    return {a: Path(a).name if names.count(Path(a).name) == 1 else "/".join(Path(a).parts[-2:]) for a in shared}


def row_label(r: BenchResult, tags: dict[str | None, str]) -> str:
    """backend, and the artifact's tag when another artifact runs on the same backend and precision."""
    tag = tags.get(r.artifact)
    return f"{r.backend} ({tag})" if tag else r.backend


def flagged_baselines(rows: Sequence[BenchResult]) -> set[tuple[str, int]]:
    """(model, batch size) whose PyTorch FP32 row is flagged: no row there gets a speed-up (nothing to divide by)."""
    return {(r.model, r.batch_size) for r in rows if r.backend == "torch" and r.precision == "fp32" and r.flagged}


def _baseline_missing(r: BenchResult, rows: Sequence[BenchResult]) -> bool:
    return not r.flagged and r.speedup is None and (r.model, r.batch_size) in flagged_baselines(rows)


def _table_cells(r: BenchResult, tags: dict[str | None, str],
                 rows: Sequence[BenchResult] = ()) -> dict[str, str]:
    from rich.markup import escape

    s = r.latency_ms
    cv = f"[yellow]{r.cv:.1%} ⚠[/yellow]" if r.noisy else f"{r.cv:.1%}"
    return {"backend": escape(row_label(r, tags)), "prec.": escape(r.precision), "batch": str(r.batch_size),
            "mean": fmt_ms(s.mean), "std": fmt_ms(s.std), "p50": fmt_ms(s.p50), "p90": fmt_ms(s.p90),
            "p95": fmt_ms(s.p95), "p99": fmt_ms(s.p99), "min": fmt_ms(s.min), "max": fmt_ms(s.max), "CV": cv,
            "img/s": _compact(r.throughput_ips, "", 1),
            "vs torch\nfp32": "[yellow]flagged[/yellow]" if r.flagged else
            "[yellow]no base[/yellow]" if _baseline_missing(r, rows) else _compact(r.speedup, "×", 2)}


def _compact(value: float | None, unit: str, digits: int) -> str:
    """Fewer decimals for big numbers (2560000 img/s, 830×), so the column stays narrow."""
    if value is None:
        return "—"
    return f"{value:.{digits if value < 100 else 0}f}{unit}"


def results_tables(report: BenchReport, *, wide: bool = False, width: int | None = None) -> list[Any]:
    """rich Tables per model: the measurements (latency per call in ms), then what was skipped and why.
    Numbers never wrap and are never cut; only the backend label and the skip reasons fold. `width`: the
    terminal's columns, which leave out `NARROW_DROPS` (named under the table) when the default set is wider."""
    from rich.markup import escape

    from resnet_deploy.tables import add_name_column, add_number_column, add_word_column, compact_table, fit_columns

    env = report.environment
    machine = (env.get("gpu") or {}).get("name") or (env.get("cpu") or {}).get("model", "?")
    columns = [name for name, wide_only in TABLE_COLUMNS if wide or not wide_only]
    tables: list[Any] = []
    for model in models_of(report):
        rows = ordered_results([r for r in report.results if r.model == model])
        tags = artifact_tags(rows)
        if rows:
            title = escape(f"{model} on {machine} (latency per call, ms)")

            def build(shown: Sequence[str], rows: list[BenchResult] = rows, tags: dict = tags,
                      title: str = title) -> Any:
                table = compact_table(title)
                for name in shown:  # the backend label folds when the terminal is narrow; numbers never wrap
                    if name == "backend":
                        add_name_column(table, name)
                    elif name == "prec.":
                        add_word_column(table, name)
                    else:
                        add_number_column(table, name)
                for i, r in enumerate(rows):
                    cells = _table_cells(r, tags, rows)
                    last_of_batch = i + 1 == len(rows) or rows[i + 1].batch_size != r.batch_size
                    table.add_row(*[cells[name] for name in shown], end_section=last_of_batch)
                return table

            tables.append(build(columns) if wide else fit_columns(build, columns, NARROW_DROPS, width))
            tables += flag_lines(rows, tags)
        skipped = [s for s in report.skipped if s.model == model]
        if skipped:
            table = compact_table(escape(f"{model}: skipped"))
            for name in ("backend", "prec.", "batch"):
                add_word_column(table, name)
            add_name_column(table, "reason")
            for s in skipped:
                table.add_row(escape(s.backend), escape(s.precision),
                              "all" if s.batch_size is None else str(s.batch_size), escape(s.reason))
            tables.append(table)
    return tables


def flag_lines(rows: Sequence[BenchResult], tags: dict[str | None, str] | None = None) -> list[str]:
    """One line per flagged row, under its table: why it shows no speed-up (naming the file when two artifacts
    share a backend and precision); then, when the PyTorch FP32 row is flagged, that every row of that batch
    size lacks a speed-up because of it."""
    from rich.markup import escape

    tags = artifact_tags(rows) if tags is None else tags
    lines = [f"[yellow]flagged[/yellow] {escape(f'{row_label(r, tags)} {r.precision} batch {r.batch_size}: {reason}')}"
             " (no speed-up)" for r in rows for reason in r.flags]
    return lines + [f"[yellow]no base[/yellow] {escape(line)}" for line in baseline_lines(rows)]


def baseline_lines(rows: Sequence[BenchResult]) -> list[str]:
    """Why whole batch sizes have no speed-up: their PyTorch FP32 baseline is flagged."""
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        batches = sorted(b for m, b in flagged_baselines(rows) if m == model)
        if batches:
            which = ", ".join(map(str, batches))
            lines.append(f"{model} batch {which}: no speed-up for any row, because the PyTorch FP32 baseline they "
                         "are divided by is flagged (see above); rerun on a quiet machine")
    return lines


def load_line(env: dict[str, Any]) -> str | None:
    """`- Load: ...` from the before/after readings bench takes (None when it took none)."""
    load = env.get("load") or {}
    parts = []
    for when in ("before", "after"):
        reading = load.get(when) or {}
        average = reading.get("load_average")
        mhz = reading.get("cpu_mhz") or {}
        if average is None and not mhz:
            continue
        text = f"{when}: load average {' '.join(f'{x:g}' for x in average)}" if average else f"{when}:"
        if mhz:
            freq = f"{mhz['min']}" if mhz["min"] == mhz["max"] else f"{mhz['min']}–{mhz['max']}"
            text += f", CPU {freq} MHz ({mhz.get('source', '?')})"
        parts.append(text)
    return "- Load: " + "; ".join(parts) if parts else None


def environment_lines(env: dict[str, Any]) -> list[str]:
    """Short human lines for the machine a report was measured on."""
    cpu = env.get("cpu") or {}
    lines = [f"- Date: {env.get('date', '?')}",
             f"- CPU: {cpu.get('model', '?')}, {cpu.get('usable_cores', '?')} usable of "
             f"{cpu.get('logical_cores', '?')} logical cores"
             + (f", features {', '.join(cpu['flags'])}" if cpu.get("flags") else "")
             + (f", INT8 class {cpu['isa_class']}" if cpu.get("isa_class") else "")]
    gpu = env.get("gpu")
    if gpu:
        clocks = f", SM clock {gpu['clocks_sm']}/{gpu['clocks_max_sm']} MHz" if gpu.get("clocks_sm") else ""
        lines.append(f"- GPU: {gpu.get('name', '?')}, driver {gpu.get('driver_version', '?')}{clocks}")
    threads = {k: v for k, v in (env.get("threads") or {}).items() if v is not None}
    if threads:
        lines.append("- Threads: " + ", ".join(f"{k}={v}" for k, v in threads.items()))
    versions = {k: v for k, v in (env.get("versions") or {}).items() if v}
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"- Platform: {env.get('platform', '?')}, Python {env.get('python', '?')}")
    load = load_line(env)
    return [*lines, load] if load else lines


def render_markdown(report: BenchReport, *, command: str | None = None, plot: str | None = None,
                    scenarios: Sequence[Any] = ()) -> str:
    out: list[str] = ["# resnet-deploy bench", ""]
    if command:
        out += ["Command:", "", "```", command, "```", ""]
    out += ["## Machine", "", *environment_lines(report.environment), ""]
    out += ["## Method", "",
            f"- {report.timing.describe()}; each call synchronized with the device; latency per call in ms.",
            "- Input: random data of the model's input shape, drawn fresh for each run.",
            f"- Interleaving: {INTERLEAVING}.",
            "- Speed-up: PyTorch FP32 mean latency / row mean latency, same model and batch size.",
            f"- Flagged rows get no speed-up: rounds that disagree (slowest round median over {ROUND_SPREAD_LIMIT:g}× "
            f"the fastest), or a batch over {ROUND_SPREAD_LIMIT:g}× slower per call (p50) than a larger batch of the "
            "same backend and precision.",
            f"- CV (std/mean) above {CV_WARN_THRESHOLD:.0%} is marked ⚠: a noisy machine or unlocked clocks.", ""]
    if report.interrupted:
        out += [f"**Interrupted**: {len(report.results)} of {report.planned_rows or '?'} rows measured; the rows "
                "below are the ones measured before it.", ""]
    if report.notes:
        out += ["## Notes", "", *[f"- {note}" for note in report.notes], ""]
    for model in models_of(report):
        out += [f"## {model}", ""]
        rows = ordered_results([r for r in report.results if r.model == model])
        tags = artifact_tags(rows)
        if rows:
            out += ["| backend | precision | batch | mean ms | std | p50 | p90 | p95 | p99 | min | max | images/s | CV "
                    "| speed-up vs PyTorch FP32 |",
                    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in rows:
                s = r.latency_ms
                cv = f"{r.cv:.1%}" + (" ⚠" if r.noisy else "")
                out.append(f"| {row_label(r, tags)} | {r.precision} | {r.batch_size} | {s.mean:.3f} | {s.std:.3f} | "
                           f"{s.p50:.3f} | {s.p90:.3f} | {s.p95:.3f} | {s.p99:.3f} | {s.min:.3f} | {s.max:.3f} | "
                           f"{r.throughput_ips:.1f} | {cv} | {_markdown_speedup(r, rows)} |")
            out.append("")
            out += [f"- {line}" for line in baseline_lines(rows)] + ([""] if flagged_baselines(rows) else [])
            copies = sorted({r.copies for r in rows})
            out += [f"Device: {', '.join(sorted({r.device for r in rows}))}; host↔device copies: {', '.join(copies)}.",
                    ""]
        skipped = [s for s in report.skipped if s.model == model]
        if skipped:
            out += ["Skipped:", "", "| backend | precision | batch | reason |", "| --- | --- | --- | --- |"]
            for s in skipped:
                batch = "all" if s.batch_size is None else str(s.batch_size)
                out.append(f"| {s.backend} | {s.precision} | {batch} | {s.reason} |")
            out.append("")
    out += scenario_markdown(scenarios)
    if plot:
        out += [f"![latency and throughput]({plot})", ""]
    return "\n".join(out)


def _markdown_speedup(r: BenchResult, rows: Sequence[BenchResult] = ()) -> str:
    if r.flagged:
        return "flagged: " + "; ".join(r.flags).replace("|", "/")
    if _baseline_missing(r, rows):
        return "— (the PyTorch FP32 baseline is flagged)"
    return fmt_speedup(r.speedup)


def write_markdown(report: BenchReport, path: str | Path, *, command: str | None = None,
                   plot: str | Path | None = None, scenarios: Sequence[Any] = ()) -> Path:
    target = Path(path)
    plot_ref = None
    if plot is not None:
        plot = Path(plot)
        try:  # a link relative to the report, so the pair can move together
            plot_ref = str(plot.resolve().relative_to(target.resolve().parent))
        except ValueError:
            plot_ref = str(plot.resolve())
    write_text(target, render_markdown(report, command=command, plot=plot_ref, scenarios=scenarios))
    return target


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """Per model: mean latency vs batch size (log scale, p90 as the upper whisker) and throughput bars
    annotated with the speed-up over PyTorch FP32."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    models = [m for m in models_of(report) if any(r.model == m for r in report.results)]
    if not models:
        raise ValueError("nothing was measured; there is nothing to plot")
    fig = Figure(figsize=(14, 4.8 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False)
    for row, model in enumerate(models):
        results = ordered_results([r for r in report.results if r.model == model])
        _plot_latency(axes[row][0], model, results)
        _plot_throughput(axes[row][1], model, results)
    cpu = (report.environment.get("cpu") or {}).get("model", "?")
    gpu = (report.environment.get("gpu") or {}).get("name")
    fig.suptitle(f"resnet-deploy bench on {gpu or cpu} — {report.environment.get('date', '')}", fontsize=11)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return target


def _series(results: Sequence[BenchResult]) -> dict[tuple[str, str, str], list[BenchResult]]:
    """Rows by (backend, precision, artifact tag): full and mixed INT8 of one model are two series."""
    tags = artifact_tags(results)
    series: dict[tuple[str, str, str], list[BenchResult]] = {}
    for r in sorted(results, key=lambda r: (series_key(r), r.artifact or "")):
        series.setdefault((r.backend, r.precision, tags.get(r.artifact, "")), []).append(r)
    return series


def _series_label(backend: str, precision: str, tag: str) -> str:
    return f"{backend} {precision}" + (f" ({tag})" if tag else "")


def _plot_latency(ax: Any, model: str, results: Sequence[BenchResult]) -> None:
    seen: set[tuple[str, str]] = set()
    for (backend, precision, tag), rows in _series(results).items():
        hollow = (backend, precision) in seen  # a second artifact of the same backend/precision: open markers
        seen.add((backend, precision))
        rows = sorted(rows, key=lambda r: r.batch_size)
        xs = [r.batch_size for r in rows]
        means = [r.latency_ms.mean for r in rows]
        upper = [r.latency_ms.p90 - r.latency_ms.mean for r in rows]
        lower = [0.0 for _ in rows]
        ax.errorbar(xs, means, yerr=[lower, [max(u, 0.0) for u in upper]], capsize=3,
                    color=BACKEND_COLORS.get(backend, "gray"), marker=PRECISION_MARKERS.get(precision, "x"),
                    linestyle=PRECISION_LINES.get(precision, "-"), label=_series_label(backend, precision, tag),
                    markerfacecolor="white" if hollow else None)
    batch_sizes = sorted({r.batch_size for r in results})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per call, ms (mean; whisker to p90)")
    ax.set_title(f"{model}: latency vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_throughput(ax: Any, model: str, results: Sequence[BenchResult]) -> None:
    series = _series(results)
    batch_sizes = sorted({r.batch_size for r in results})
    width = 0.8 / max(len(series), 1)
    labelled = False
    for i, ((backend, precision, tag), rows) in enumerate(series.items()):
        by_batch = {r.batch_size: r for r in rows}
        xs = [j + (i - (len(series) - 1) / 2) * width for j, b in enumerate(batch_sizes) if b in by_batch]
        present = [by_batch[b] for b in batch_sizes if b in by_batch]
        bars = ax.bar(xs, [r.throughput_ips for r in present], width=width * 0.95,
                      color=BACKEND_COLORS.get(backend, "gray"), hatch=_HATCHES.get(precision, ""),
                      edgecolor="white", label=_series_label(backend, precision, tag))
        labels = [fmt_speedup(r.speedup) if r.speedup is not None else "" for r in present]
        ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=2)
        labelled = labelled or any(labels)
    ax.set_xticks(range(len(batch_sizes)), [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size")
    # The axis promises bar labels only when there are some.
    ax.set_ylabel("throughput, images/s" + (" (bar label: speed-up vs PyTorch FP32)" if labelled else ""))
    missing = sorted(b for _, b in flagged_baselines(results))
    if missing:
        ax.text(0.01, 0.99, f"no speed-up at batch {', '.join(map(str, missing))}: the PyTorch FP32 baseline is "
                "flagged (a busy machine)", transform=ax.transAxes, fontsize=7, va="top", color="#9a6700")
    ax.set_title(f"{model}: throughput")
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar


_HATCHES = {"fp32": "", "fp16": "//", "bf16": "..", "int8": "xx"}
