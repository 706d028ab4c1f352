"""`resnet-deploy bench`: latency and throughput across backends, precisions and batch sizes."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnet_deploy.bench.request import (
    ALL_BACKENDS,
    ALL_PRECISIONS,
    DEFAULT_BATCH_SIZES,
    BenchRequest,
    ServedBenchRequest,
    parse_batch_sizes,
    parse_choices,
    parse_scenarios,
)
from resnet_deploy.commands._options import (
    ArchOption,
    DepthOption,
    DeviceOption,
    JsonOption,
    PeakQpsOption,
    ScenarioOption,
    TargetLatencyOption,
    TargetQpsOption,
    resolve_arch,
)
from resnet_deploy.commands._output import detail, emit_json, info, plain, progress_bar, warn
from resnet_deploy.errors import Interrupted, UsageError

if TYPE_CHECKING:  # heavy modules stay out of `--help`
    from resnet_deploy.bench.run import StepProgress
    from resnet_deploy.bench.timing import BenchReport


def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(
        help="Artifacts to bench (.safetensors/.pt, .onnx, .xml, .plan); or name a model with --depth/--arch.",
        show_default=False)] = None,
    depth: DepthOption = None,
    arch: ArchOption = None,
    backends: Annotated[str | None, typer.Option(
        "--backends", help=f"Comma-separated: {','.join(ALL_BACKENDS)} [default: all; those unavailable here are "
                           "listed as skipped].")] = None,
    precisions: Annotated[str | None, typer.Option(
        "--precisions", help=f"Comma-separated: {','.join(ALL_PRECISIONS)} [default: all with --depth/--arch; "
                             "an artifact runs the precision it carries].")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")]
        = ",".join(map(str, DEFAULT_BATCH_SIZES)),
    device: DeviceOption = "auto",
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up calls per batch size, not timed.")] = 5,
    iters: Annotated[int | None, typer.Option("--iters", help="Timed calls per batch size.")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Seconds of timed calls per batch size (at least 10 calls) [default: 3].")] = None,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Interleaved rounds: each round times every row for a share of its calls.")] = 3,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for every backend [default: each backend's own].")] = None,
    calib_data: Annotated[Path | None, typer.Option(
        "--calib-data", help="Images to calibrate INT8 on (with --depth/--arch) [default: random images, "
                             "fine for latency only].")] = None,
    calib_samples: Annotated[int | None, typer.Option(
        "--calib-samples", help="Calibration images taken from --calib-data.")] = None,
    exclude_copies: Annotated[bool, typer.Option(
        "--exclude-copies", help="On a GPU, time device-resident inputs (host<->device copies excluded).")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Where --depth/--arch builds its ONNX models [default: ~/.cache/resnet-deploy/bench].")]
        = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a Markdown report here.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG: latency vs batch size and throughput per backend/precision.")] = None,
    scenario: ScenarioOption = None,
    target_qps: TargetQpsOption = None,
    target_latency_ms: TargetLatencyOption = 15.0,
    peak_qps: PeakQpsOption = False,
    accuracy: Annotated[bool, typer.Option(
        "--accuracy", help="Also run LoadGen's accuracy mode on the labelled images of --data (Offline, each image "
                           "once) and judge MLPerf's criterion: top-1 at least 99 % of the FP32 row's.")] = False,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Labelled images for --accuracy (ImageFolder or CIFAR batches; test split first).",
        show_default=False)] = None,
    accuracy_images: Annotated[int, typer.Option(
        "--accuracy-images", help="Images taken from --data, evenly across classes.")] = 1000,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Show every column (std, p90, p95, min, max; LoadGen's p90); by default each table fits "
                       "the terminal, naming what it leaves out.")]
        = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="Bench models served by a Triton server (resnet-deploy serve) at HOST:PORT (HTTP) or "
                      "grpc://HOST:PORT; the arguments are then model names. End-to-end latency per request.",
        show_default=False)] = None,
    concurrency: Annotated[str, typer.Option(
        "--concurrency", help="With --url: requests kept in flight, comma-separated levels.")] = "1,2,4,8",
    max_requests: Annotated[int, typer.Option(
        "--max-requests", help="With --url: at most this many requests per level (and --duration s, default 3).")]
        = 2000,
    json_output: JsonOption = False,
) -> None:
    """Measure latency and throughput of artifacts.

    Latency (mean, std, p50-p99) and throughput per backend, precision and batch size, with the speed-up
    over PyTorch FP32 at the same batch size. Warm-up excluded, every call synchronized.
    """
    if url is not None:
        if depth is not None or arch is not None or report is not None or plot is not None or accuracy:
            raise UsageError("--url benches served models by name; --depth/--arch, --report, --plot and --accuracy "
                             "are for artifacts run in this process")
        _bench_url(ServedBenchRequest(
            url=url, models=tuple(str(name) for name in artifacts or []),
            concurrency=parse_batch_sizes(concurrency, "--concurrency") if concurrency else (),
            max_requests=max_requests, duration=duration, scenarios=parse_scenarios(scenario), target_qps=target_qps,
            target_latency_ms=target_latency_ms, peak_qps=peak_qps), json_output=json_output)
        return
    from resnet_deploy.bench.run import BenchListener, run_bench

    request = BenchRequest(
        artifacts=tuple(artifacts or ()), arch=resolve_arch(depth, arch, required=False),
        backends=parse_choices(backends, ALL_BACKENDS, "--backends"),
        precisions=parse_choices(precisions, ALL_PRECISIONS, "--precisions"),
        batch_sizes=parse_batch_sizes(batch_sizes), device=device, warmup=warmup, iters=iters, duration=duration,
        rounds=rounds, threads=threads, calib_data=calib_data, calib_samples=calib_samples,
        exclude_copies=exclude_copies, cache_dir=cache_dir, report=report, plot=plot,
        scenarios=parse_scenarios(scenario), target_qps=target_qps, target_latency_ms=target_latency_ms,
        peak_qps=peak_qps, accuracy=accuracy, data=data, accuracy_images=accuracy_images,
        command="resnet-deploy " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]))
    result = run_bench(request, BenchListener(info=_say, warn=warn, detail=detail, steps=_steps))
    if json_output:
        emit_json(result.to_dict())
    else:
        _print_tables(result, wide=wide)
    if result.interrupted:
        raise Interrupted(f"interrupted ({len(result.results)} of {result.planned_rows} rows measured)")
    if not result.results:
        raise UsageError("nothing could be measured here; see the skipped rows for why")


@contextlib.contextmanager
def _steps(total: int) -> Iterator[StepProgress]:
    """The timing loop's progress bar: its line names the step, the bar counts rows x rounds."""
    from resnet_deploy.bench.run import StepProgress

    with progress_bar() as bar:
        task = bar.add_task("bench", total=total)
        yield StepProgress(say=lambda message: bar.update(task, description=plain(message)),
                           step=lambda: bar.advance(task))


def _print_tables(report: BenchReport, *, wide: bool = False) -> None:
    from resnet_deploy.bench.report import results_tables
    from resnet_deploy.tables import table_console

    out = table_console()
    for table in results_tables(report, wide=wide, width=out.width):
        out.print(table)
    for note in report.notes:
        out.print(plain(f"note: {note}"))
    if report.scenarios:
        from resnet_deploy.bench.scenario_report import accuracy_table, scenario_table

        width = None if wide else out.width  # --wide: every column, however wide
        performance = [r for r in report.scenarios if r.top1 is None]
        judged = [r for r in report.scenarios if r.top1 is not None]
        if performance:
            out.print(scenario_table(performance, width=width))
        if judged:
            out.print(accuracy_table(judged, width=width))


def _bench_url(request: ServedBenchRequest, *, json_output: bool) -> None:
    """Served models: every concurrency level, then the LoadGen scenarios asked for, each bounded in time."""
    from resnet_deploy.bench.scenario_report import scenario_table, served_table
    from resnet_deploy.bench.served import run_served_bench
    from resnet_deploy.tables import table_console

    result = run_served_bench(request, info=_say)
    if json_output:
        emit_json(result.to_dict())
        return
    out = table_console()
    out.print(served_table(result))
    for r in result.rows:
        for note in r.notes:
            out.print(plain(f"note: {r.model} x{r.concurrency}: {note}"))
    if result.scenarios:
        out.print(scenario_table(result.scenarios, width=out.width))


def _say(message: str) -> None:
    info(message)  # info() shows it as literal text
