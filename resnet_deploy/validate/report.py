"""How a validation result is shown: the rich table for the terminal and the Markdown report.

Nothing here prints; the command module prints the table, and `write_report` writes the file
atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnet_deploy.confidence import significance_note
from resnet_deploy.gates import render_gate
from resnet_deploy.validate.result import ArtifactResult, ValidationResult

# "CI": 95 % intervals (Wilson; paired Newcombe for Δtop-1), explained in the report; `--wide` and the report.
COLUMNS = ("artifact", "backend", "precision", "top-1 %", "top-1 CI", "top-5 %", "Δtop-1", "Δtop-1 CI", "Δtop-5",
           "agree %", "agree CI", "top-5 overlap %", "max abs Δlogit", "mean abs Δlogit", "cosine", "img/s", "gate",
           "result")
# The terminal's default columns (fit 100 columns); `--wide` shows all. The gate is in the failure lines.
COMPACT_COLUMNS = ("artifact", "backend", "precision", "top-1 %", "top-5 %", "Δtop-1", "agree %", "max abs Δlogit",
                   "img/s", "result")
TEXT_COLUMNS = ("artifact", "backend", "precision", "gate", "result")
# Left out, in this order, when a terminal is too narrow for the compact columns (80 columns: img/s and top-5).
NARROW_DROPS = ("img/s", "top-5 %", "Δtop-1", "max abs Δlogit")
# Terminal headers on two lines, so a number column is no wider than its numbers.
HEADERS = {"top-1 %": "top-1\n%", "top-5 %": "top-5\n%", "agree %": "agree\n%", "top-5 overlap %": "top-5\noverlap %",
           "max abs Δlogit": "max abs\nΔlogit", "mean abs Δlogit": "mean abs\nΔlogit", "precision": "prec."}


def _number(value: float | None, digits: int = 2, *, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _scientific(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2e}"


def _interval(value: tuple[float, float] | None, *, signed: bool = False, compact: bool = False) -> str:
    if value is None:
        return "–"
    digits = 1 if compact else 2
    low, high = _number(value[0], digits, signed=signed), _number(value[1], digits, signed=signed)
    return f"{low}–{high}" if compact else f"{low} – {high}"


def _delta_interval(result: ArtifactResult, *, compact: bool = False) -> str:
    """The paired interval and McNemar's p; 'not significant' when p ≥ 0.05 (compact: 'n.s.', said below)."""
    if result.top1_delta_ci is None:
        return "–"
    note = significance_note(result.top1_delta_p)
    if compact:  # p and the words go on a line below the table
        return f"{_interval(result.top1_delta_ci, signed=True, compact=True)}{' n.s.' if note else ''}"
    text = f"{_interval(result.top1_delta_ci, signed=True)}, p {_p_value(result.top1_delta_p)}"
    return f"{text} ({note})" if note else text


def _p_value(p: float | None) -> str:
    if p is None or p != p:
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def row_cells(result: ArtifactResult, *, compact: bool = False) -> list[str]:
    """The table's cells for one row (shared by the rich table, `compact`, and the Markdown report)."""
    reference = result.is_reference
    verdict = "PASS" if result.passed else "FAIL"
    return [
        result.artifact,
        result.backend,
        result.precision,
        _number(result.top1),
        _interval(result.top1_ci, compact=compact),
        _number(result.top5),
        "ref" if reference else _number(result.top1_delta, signed=True),
        "ref" if reference else _delta_interval(result, compact=compact),
        "ref" if reference else _number(result.top5_delta, signed=True),
        "ref" if reference else _number(result.agreement),
        "ref" if reference else _interval(result.agreement_ci, compact=compact),
        "ref" if reference else _number(result.top5_overlap),
        "ref" if reference else _scientific(result.max_abs_logit_diff),
        "ref" if reference else _scientific(result.mean_abs_logit_diff),
        "ref" if reference else _number(result.cosine_similarity, 6),
        _number(result.images_per_s, 0),
        "reference" if reference else (result.gate.describe() if result.gate else "not gated"),
        verdict,
    ]


def results_table(result: ValidationResult, *, short_names: bool = True, wide: bool = False,
                  width: int | None = None) -> Any:
    """A rich Table; `short_names` shows file names (paths where names collide). `wide` shows every column;
    otherwise the compact ones, fewer when `width` terminal columns cannot hold them (`NARROW_DROPS`, named
    under the table). Numbers never wrap and are never cut: only the artifact's name folds."""
    from rich.markup import escape

    from resnet_deploy.tables import add_name_column, add_number_column, add_word_column, compact_table, fit_columns

    ds = result.dataset
    crop = ", ten-crop" if result.ten_crop else ""
    title = f"validate: {ds.images} images, {ds.classes} classes from {ds.path}{crop}"
    names = [Path(r.artifact).name if r.backend != "ensemble" else r.artifact for r in result.results]
    rows = []
    for r, name in zip(result.results, names, strict=True):
        cells = row_cells(r, compact=True)
        if short_names and names.count(name) == 1:
            cells[0] = name
        cells = [escape(cell) for cell in cells]  # a file named "m[1].onnx" is not markup
        cells[-1] = f"[green]{cells[-1]}[/green]" if r.passed else f"[bold red]{cells[-1]}[/bold red]"
        rows.append((dict(zip(COLUMNS, cells, strict=True)), None if r.passed else "red"))

    def build(shown: list[str]) -> Any:
        table = compact_table(escape(title))
        for column in shown:
            header = HEADERS.get(column, column)
            if column in ("artifact", "precision"):  # an ensemble's precision is "fp32+int8+bf16"
                add_name_column(table, header)
            elif column in TEXT_COLUMNS:
                add_word_column(table, header)
            else:
                add_number_column(table, header)
        for cells, style in rows:
            table.add_row(*[cells[column] for column in shown], style=style)
        return table

    if wide:
        return build(list(COLUMNS))
    return fit_columns(build, [c for c in COLUMNS if c in COMPACT_COLUMNS], NARROW_DROPS, width)


def gate_lines(result: ValidationResult) -> list[str]:
    """One line per distinct gate, in the words build-engine uses (`gates.render_gate`), then informational notes."""
    lines: list[str] = []
    for r in result.results:
        if r.gate is not None and not r.is_reference:
            line = f"gate ({r.precision}): {render_gate(r.gate)}"
            if line not in lines:
                lines.append(line)
    lines += [f"informational ({Path(r.artifact).name}): {note}" for r in result.results for note in r.notes]
    lines += [arithmetic_line(r) for r in result.results if r.arithmetic]
    for r in result.results:
        if r.top1_delta_ci is not None and significance_note(r.top1_delta_p):
            lines.append(f"{Path(r.artifact).name}: Δtop-1 {r.top1_delta:+.2f} points (95 % CI "
                         f"{_interval(r.top1_delta_ci, signed=True)}), McNemar's exact p {_p_value(r.top1_delta_p)}: "
                         "not significant")
    return lines


def arithmetic_line(r: Any) -> str:
    """A CPU INT8 artifact's kernels beside the Q/DQ arithmetic of its own model (validate/arithmetic.py)."""
    a = r.arithmetic
    verdict = "the kernels saturate" if a["saturating"] else "no saturation"
    return (f"{Path(r.artifact).name}: this CPU's INT8 kernels agree on {r.agreement:.2f}%, the Q/DQ arithmetic of "
            f"the same model on {a['agreement']:.2f}% (top-1 {a['top1']:.2f}%): {-a['kernel_gap']:+.2f} points, "
            f"{verdict} (limit {a['saturation_gap']:g})")


def failure_lines(result: ValidationResult) -> list[str]:
    """One line per failed check, naming the artifact."""
    return [f"{r.artifact}: {failure}" for r in result.results for failure in r.failures]


def _markdown_table(result: ValidationResult) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for r in result.results:
        cells = [cell.replace("|", "\\|") for cell in row_cells(r)]
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: ValidationResult, environment: dict[str, Any]) -> str:
    """The whole report: verdict, table, failures, data set, environment, and each artifact's lineage."""
    ds = result.dataset
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failed)} of {len(result.results)} rows)"
    crops = "ten-crop (4 corners + centre and their flips, softmax averaged)" if result.ten_crop else "centre crop"
    limit = f" (--limit {ds.limit}, stratified over classes)" if ds.limit else ""
    parts = [
        "# resnet-deploy validate",
        "",
        f"**{verdict}** — reference: `{result.reference}`; "
        f"{crops}; "
        f"batch size {result.batch_size}, {result.workers} decoding worker(s), {result.seconds:.1f} s in all.",
        "",
        "Deltas are artifact minus reference in percentage points (negative = a drop). Agreement is the share of "
        "images whose top-1 class matches the reference's; top-5 overlap the mean share of shared top-5 classes. "
        "Intervals are 95 %: Wilson score intervals for top-1 and agreement; for Δtop-1 the paired interval of "
        "Newcombe (1998, method 10) with McNemar's exact test on the images only one of the two gets right "
        "(p ≥ 0.05: not significant). The gates judge the point estimates. "
        "Logit differences and cosine similarity compare raw outputs on the same input tensors. img/s counts "
        "inference only, at this batch size; use `resnet-deploy bench` for latency.",
        "",
        _markdown_table(result),
        "",
    ]
    failures = failure_lines(result)
    if failures:
        parts += ["## Failures", "", *[f"- {line}" for line in failures], ""]
    parts += ["## Gates", ""]
    for r in result.results:
        if r.gate is not None and not r.is_reference:
            parts.append(f"- `{r.artifact}` ({r.precision}): {render_gate(r.gate)}")
        parts += [f"  - informational: {note}" for note in r.notes]
        if r.arithmetic:
            parts.append(f"  - {arithmetic_line(r)}")
    parts += [
        "",
        "## Data set",
        "",
        f"- path: `{ds.path}` ({ds.kind}{', split ' + ds.split if ds.split else ''})",
        f"- images evaluated: {ds.images} of {ds.available}{limit}",
        f"- classes: {ds.classes} ({', '.join(ds.class_names[:20])}{', …' if ds.classes > 20 else ''})",
        f"- skipped (unreadable): {ds.skipped}",
    ]
    for item in ds.skipped_files:
        parts.append(f"  - `{item['path']}`: {item['reason']}")
    if ds.skipped > len(ds.skipped_files):
        parts.append(f"  - … and {ds.skipped - len(ds.skipped_files)} more")
    parts += ["", "## Environment", "", "```json", json.dumps(environment, indent=2, default=str), "```", "",
              "## Artifacts and lineage", ""]
    for r in result.results:
        parts += [f"### `{r.artifact}`", "", f"- backend: {r.backend} on {r.device}, precision {r.precision}",
                  f"- input transform: {r.transform}", "", "```json", json.dumps(r.lineage, indent=2, default=str),
                  "```", ""]
    return "\n".join(parts)


def write_report(path: str | Path, result: ValidationResult, environment: dict[str, Any]) -> Path:
    from resnet_deploy.atomic import write_text

    target = Path(path)
    write_text(target, markdown_report(result, environment))
    return target
