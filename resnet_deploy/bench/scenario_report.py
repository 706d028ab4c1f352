"""MLPerf LoadGen's results as tables and Markdown (`bench --scenario`, `--accuracy`), and the served models'
concurrency table (`bench --url`). One table per model: the model column would take room the numbers need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SCENARIO_COLUMNS = ("model", "backend", "precision", "scenario", "p50 ms", "p90 ms", "p99 ms", "samples/s",
                    "target", "LoadGen")


def scenario_rows(results: Sequence[Any]) -> list[list[str]]:
    rows = []
    for r in results:
        lat = r.latency_ms
        target = (f"{r.target_qps:.4g} QPS, p99 ≤ {r.target_latency_ms:g} ms" if r.scenario == "server" else "")
        verdict = ("VALID" if r.valid else "INVALID") + ("" if r.mlperf_valid or not r.valid else " (short run)")
        rows.append([r.model, r.backend, r.precision, r.scenario,
                     *(f"{lat[k]:.3f}" if k in lat else "–" for k in ("p50", "p90", "p99")),
                     f"{r.samples_per_s:.1f}" if r.samples_per_s is not None else "–", target, verdict])
    return rows


ACCURACY_COLUMNS = ("model", "backend", "precision", "images", "top-1 %", "FP32 top-1 %", "MLPerf 99 %")


def accuracy_rows(results: Sequence[Any]) -> list[list[str]]:
    verdict = {True: "PASS", False: "FAIL", None: "–"}
    return [[r.model, r.backend, r.precision, str(r.images), f"{r.top1:.2f}",
             f"{r.reference_top1:.2f}" if r.reference_top1 is not None else "–", verdict[r.meets_mlperf_accuracy]]
            for r in results]


def accuracy_table(results: Sequence[Any], *, width: int | None = None) -> Any:
    return _loadgen_table("LoadGen accuracy mode (Offline, each image once)", ACCURACY_COLUMNS,
                          accuracy_rows(results), results, words=("backend", "precision", "MLPerf 99 %"), drops=(),
                          width=width)


def accuracy_markdown(results: Sequence[Any]) -> list[str]:
    if not results:
        return []
    out = ["## LoadGen accuracy mode", "",
           "LoadGen's AccuracyOnly mode in the Offline scenario: every labelled image once, top-1 from the answers. "
           "MLPerf's criterion: at least 99 % of the FP32 row's top-1 (same model, same images).", "",
           "| " + " | ".join(ACCURACY_COLUMNS) + " |", "| " + " | ".join(["---"] * len(ACCURACY_COLUMNS)) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in accuracy_rows(results)]
    notes = sorted({note for r in results for note in r.notes if "not a valid MLPerf" not in note})
    return [*out, "", *[f"- {note}" for note in notes], ""]


def scenario_markdown(results: Sequence[Any]) -> list[str]:
    judged = [r for r in results if r.top1 is not None]
    results = [r for r in results if r.top1 is None]
    if not results:
        return accuracy_markdown(judged)
    out = ["## MLPerf LoadGen scenarios", "",
           "Driven by MLPerf's LoadGen (SingleStream: one sample per query, next query when the last completes; "
           "Offline: all samples at once, run in batches; Server: Poisson arrivals at the target QPS, queued samples "
           "batched). Latency is LoadGen's, from query issue to completion.", ""]
    short = [r for r in results if not r.mlperf_valid]
    if short:
        out += ["Runs shorter than LoadGen's minimum duration or query count are not valid MLPerf results.", ""]
    out += ["| " + " | ".join(SCENARIO_COLUMNS) + " |", "| " + " | ".join(["---"] * len(SCENARIO_COLUMNS)) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in scenario_rows(results)]
    notes = sorted({note for r in results for note in r.notes})
    return [*out, "", *[f"- {note}" for note in notes], "", *accuracy_markdown(judged)]


def scenario_table(results: Sequence[Any], *, width: int | None = None) -> Any:
    """The scenarios for a terminal of `width` columns: numbers whole, the target and verdict wrap, one model
    goes into the title, and p90 is left out (and said so) where even that does not fit."""
    return _loadgen_table("MLPerf LoadGen scenarios", SCENARIO_COLUMNS, scenario_rows(results), results,
                          words=("backend", "precision", "scenario"), drops=("p90 ms",), width=width)


# Terminal headers of the LoadGen tables, on two lines so a number column is no wider than its numbers.
_LOADGEN_HEADERS = {"precision": "prec.", "p50 ms": "p50\nms", "p90 ms": "p90\nms", "p99 ms": "p99\nms",
                    "samples/s": "samples\n/s", "top-1 %": "top-1\n%", "FP32 top-1 %": "FP32\ntop-1 %",
                    "MLPerf 99 %": "MLPerf\n99 %"}


def _loadgen_table(title: str, columns: Sequence[str], rows: list[list[str]], results: Sequence[Any], *,
                   words: Sequence[str], drops: Sequence[str], width: int | None) -> Any:
    from rich.console import Group

    # One table per model, named in its title: the model column would take room the numbers need.
    keep = [i for i, column in enumerate(columns) if column != "model"]
    tables = []
    for model in dict.fromkeys(r.model for r in results):
        mine = [[row[i] for i in keep] for row, r in zip(rows, results, strict=True) if r.model == model]
        tables.append(_model_table(f"{title}: {model}", [columns[i] for i in keep], mine, words=words, drops=drops,
                                   width=width))
    return tables[0] if len(tables) == 1 else Group(*tables)


def _model_table(title: str, columns: Sequence[str], rows: list[list[str]], *, words: Sequence[str],
                 drops: Sequence[str], width: int | None) -> Any:
    from rich.markup import escape

    from resnet_deploy.tables import add_name_column, add_number_column, add_word_column, compact_table, fit_columns

    def build(shown: Sequence[str]) -> Any:
        table = compact_table(escape(title))
        for column in shown:
            header = _LOADGEN_HEADERS.get(column, column)
            if column in ("model", "target", "LoadGen"):
                add_name_column(table, header)
            elif column in words:
                add_word_column(table, header)
            else:
                add_number_column(table, header)
        for row in rows:
            cells = dict(zip(columns, row, strict=True))
            table.add_row(*(escape(cells[column]) for column in shown))
        return table

    return fit_columns(build, list(columns), drops, width)


def served_table(report: Any) -> Any:
    """`bench --url`'s concurrency levels (a `bench.served.ServedBenchReport`), end to end as the client sees them."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Served by Triton at {report.url} (end to end, as the client sees each request)",
                  title_justify="left")
    for column in ("model", "in flight", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in report.rows:
        table.add_row(escape(str(r.model)), str(r.concurrency), str(r.requests), f"{r.requests_per_s:.1f}",
                      f"{r.latency_ms['p50']:.2f}", f"{r.latency_ms['p90']:.2f}", f"{r.latency_ms['p99']:.2f}",
                      str(r.errors))
    return table
