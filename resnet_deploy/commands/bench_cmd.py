"""`resnet-deploy bench`: latency and throughput across backends, precisions and batch sizes."""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnet_deploy.commands._options import ArchOption, DepthOption, DeviceOption, JsonOption, resolve_arch
from resnet_deploy.commands._output import detail, emit_json, info, plain, progress_bar, warn
from resnet_deploy.errors import Interrupted, UsageError
from resnet_deploy.paths import check_io

if TYPE_CHECKING:  # heavy modules stay out of `--help`
    from resnet_deploy.bench.plan import BenchPlan
    from resnet_deploy.bench.timing import BenchReport, TimingConfig

ALL_BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BATCH_SIZES = "1,8,32"


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
        = DEFAULT_BATCH_SIZES,
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
    scenario: Annotated[str | None, typer.Option(
        "--scenario", help="Also run MLPerf LoadGen scenarios, comma-separated: single-stream, offline, server "
                           "(extra: resnet-deploy[loadgen]).", show_default=False)] = None,
    target_qps: Annotated[float | None, typer.Option(
        "--target-qps", help="Server scenario: target queries/s [default: half of what one stream sustains].",
        show_default=False)] = None,
    target_latency_ms: Annotated[float, typer.Option(
        "--target-latency-ms", help="Server scenario: the p99 latency bound (MLPerf ResNet-50: 15 ms).")] = 15.0,
    peak_qps: Annotated[bool, typer.Option(
        "--peak-qps", help="Server scenario: search the highest target QPS LoadGen judges VALID.")] = False,
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
    from resnet_deploy.bench.timing import CV_WARN_THRESHOLD, TimingConfig

    if url is not None:
        if depth is not None or arch is not None or report is not None or plot is not None or accuracy:
            raise UsageError("--url benches served models by name; --depth/--arch, --report, --plot and --accuracy "
                             "are for artifacts run in this process")
        _bench_url(url, [str(name) for name in artifacts or []], concurrency=concurrency, max_requests=max_requests,
                   duration=duration, scenario=scenario, target_qps=target_qps, target_latency_ms=target_latency_ms,
                   peak_qps=peak_qps, json_output=json_output)
        return
    artifacts = list(artifacts or [])
    if artifacts and (depth is not None or arch is not None):
        raise UsageError("give artifacts or --depth/--arch, not both")
    if not artifacts and depth is None and arch is None:
        raise UsageError("give artifact paths to bench (.safetensors/.pt, .onnx, .xml, .plan/.engine), "
                         "or name a model: --depth N or --arch NAME")
    arch_name = None if artifacts else resolve_arch(depth, arch, required=True)
    backend_list = _parse_choices(backends, ALL_BACKENDS, "--backends")
    precision_list = _parse_choices(precisions, ALL_PRECISIONS, "--precisions")
    sizes = _parse_batch_sizes(batch_sizes)
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    timing = _timing(TimingConfig, warmup=warmup, iters=iters, duration=duration, rounds=rounds)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG; give a path ending in .png")
    check_io(inputs=artifacts, outputs=[("--report", report), ("--plot", plot)], data=[data, calib_data])
    _check_accuracy_options(accuracy, data, accuracy_images, from_artifacts=bool(artifacts))
    if artifacts:
        for path in artifacts:
            if not path.is_file():
                raise UsageError(f"{path}: no such file")
        if calib_data is not None:
            raise UsageError("--calib-data builds INT8 models for --depth/--arch; "
                             "an INT8 artifact is already calibrated")
    if calib_data is not None and not calib_data.is_dir():
        raise UsageError(f"--calib-data {calib_data}: no such folder")
    if calib_samples is not None and calib_samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, got {calib_samples}")

    from resnet_deploy.bench.cache import default_cache_dir
    from resnet_deploy.bench.plan import check_requested_backends, plan_for_architecture_or_artifacts

    check_requested_backends(backend_list or (), explicit=backend_list is not None)
    device_name = _resolve_device(device)
    include_copies = not exclude_copies
    if exclude_copies and not device_name.startswith("cuda"):
        info("note: --exclude-copies has no effect on the CPU (there are no host<->device copies)")

    scenarios = _parse_scenarios(scenario)
    if "server" in scenarios:
        from resnet_deploy.bench.loadgen import check_server_numbers

        check_server_numbers(target_qps, target_latency_ms, duration)  # before anything is built or measured
    plan = plan_for_architecture_or_artifacts(
        arch_name, artifacts, backends=backend_list, precisions=precision_list, batch_sizes=sizes,
        device=device_name, threads=threads, include_copies=include_copies,
        cache_dir=cache_dir or default_cache_dir(), calib_data=calib_data, calib_samples=calib_samples,
        progress=_say)
    if scenarios or accuracy:
        from resnet_deploy.bench.loadgen import _loadgen

        _loadgen()  # a missing extra is one error line before anything is measured
    report_doc = _run(plan, sizes, timing, include_copies)
    scenario_results = [] if report_doc.interrupted else _run_scenarios(
        plan, scenarios, duration=duration, target_qps=target_qps, target_latency_ms=target_latency_ms,
        peak_qps=peak_qps, batch_sizes=sizes)
    if accuracy and data is not None and not report_doc.interrupted:
        scenario_results += _run_accuracy(plan, data, accuracy_images, batch=max(sizes))

    command = "resnet-deploy " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    noisy = report_doc.noisy()
    if noisy:
        worst = max(noisy, key=lambda r: r.cv)
        warn(f"{len(noisy)} of {len(report_doc.results)} results vary a lot between calls (coefficient of variation "
             f"above {CV_WARN_THRESHOLD:.0%}, marked ⚠; worst {worst.cv:.0%} for {worst.label()} batch "
             f"{worst.batch_size}): a busy machine or unlocked clocks; rerun on a quiet machine or with more "
             "--iters/--duration")
    _details(report_doc)
    flagged = report_doc.flagged()
    if flagged:
        warn(f"{len(flagged)} of {len(report_doc.results)} rows are flagged and show no speed-up (rounds that "
             "disagree, or slower than a larger batch): the machine was busy while they ran; rerun on a quiet "
             "machine")
    if plot is not None and report_doc.results:
        from resnet_deploy.bench.report import write_plot

        write_plot(report_doc, plot)
        _say(f"plot written to {plot}")
    elif plot is not None:
        warn(f"nothing was measured, so no plot was written to {plot}")
    if report is not None:
        from resnet_deploy.bench.report import write_markdown

        write_markdown(report_doc, report, command=command,
                       plot=plot if plot is not None and report_doc.results else None, scenarios=scenario_results)
        _say(f"report written to {report}")
    if json_output:
        emit_json({"command": command, **report_doc.to_dict(),
                   **({"scenarios": [r.to_dict() for r in scenario_results]} if scenarios or accuracy else {})})
    else:
        _print_tables(report_doc, wide=wide)
        if scenario_results:
            from resnet_deploy.bench.report import accuracy_table, scenario_table
            from resnet_deploy.tables import table_console

            out = table_console()
            width = None if wide else out.width  # --wide: every column, however wide
            performance = [r for r in scenario_results if r.top1 is None]
            judged = [r for r in scenario_results if r.top1 is not None]
            if performance:
                out.print(scenario_table(performance, width=width))
            if judged:
                out.print(accuracy_table(judged, width=width))
    if report_doc.interrupted:
        raise Interrupted(f"interrupted ({len(report_doc.results)} of {report_doc.planned_rows} rows measured)")
    if not report_doc.results:
        raise UsageError("nothing could be measured here; see the skipped rows for why")


def _parse_scenarios(text: str | None) -> list[str]:
    from resnet_deploy.bench.loadgen import SCENARIOS

    if text is None:
        return []
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in SCENARIOS]
    if unknown or not chosen:
        raise UsageError(f"--scenario takes {', '.join(SCENARIOS)} (comma-separated), got {text!r}")
    return chosen


def _run_scenarios(plan: BenchPlan, scenarios: list[str], *, duration: float | None, target_qps: float | None,
                   target_latency_ms: float, peak_qps: bool, batch_sizes: list[int]) -> list:
    if not scenarios:
        return []
    from resnet_deploy.bench.loadgen import ScenarioSettings, run_plan_scenarios

    largest = max(batch_sizes)
    options = ScenarioSettings(duration_s=duration, min_queries=1 if duration is not None else None,
                               target_qps=target_qps, target_latency_ms=target_latency_ms, offline_batch=largest,
                               server_batch=largest)
    return run_plan_scenarios(plan.cases, scenarios, options, peak_qps=peak_qps, progress=_say)


def _bench_url(url: str, models: list[str], *, concurrency: str, max_requests: int, duration: float | None,
               scenario: str | None, target_qps: float | None, target_latency_ms: float, peak_qps: bool,
               json_output: bool) -> None:
    """Served models: every concurrency level, then the LoadGen scenarios asked for, each bounded in time."""
    from resnet_deploy.serving.client import describe_served, measure_concurrency, parse_url

    parse_url(url)
    if not models:
        raise UsageError("--url: name the served models to bench, e.g. resnet20_cifar10")
    levels = _parse_batch_sizes(concurrency) if concurrency else []
    if max_requests < 1:
        raise UsageError(f"--max-requests must be at least 1, got {max_requests}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration}")
    scenarios = _parse_scenarios(scenario)
    seconds = duration if duration is not None else 3.0
    if "server" in scenarios:
        from resnet_deploy.bench.loadgen import check_server_numbers

        check_server_numbers(target_qps, target_latency_ms, seconds)
    if scenarios:
        from resnet_deploy.bench.loadgen import _loadgen

        _loadgen()
    served = [describe_served(url, model) for model in models]  # every model ready before anything is measured
    rows = []
    for model in served:
        for level in levels:
            _say(f"{model.name} at {url}: {level} in flight for {seconds:g} s (at most {max_requests} requests)")
            rows.append(measure_concurrency(model, level, duration_s=seconds, max_requests=max_requests))
    scenario_results = _served_scenarios(served, scenarios, seconds, target_qps, target_latency_ms, peak_qps)
    if json_output:
        emit_json({"url": url, "served": [r.to_dict() for r in rows],
                   "scenarios": [r.to_dict() for r in scenario_results]})
        return
    from rich.table import Table

    table = Table(title=f"Served by Triton at {url} (end to end, as the client sees each request)",
                  title_justify="left")
    for column in ("model", "in flight", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(plain(r.model), str(r.concurrency), str(r.requests), f"{r.requests_per_s:.1f}",
                      f"{r.latency_ms['p50']:.2f}", f"{r.latency_ms['p90']:.2f}", f"{r.latency_ms['p99']:.2f}",
                      str(r.errors))
    from resnet_deploy.tables import table_console

    out = table_console()
    out.print(table)
    for r in rows:
        for note in r.notes:
            out.print(plain(f"note: {r.model} x{r.concurrency}: {note}"))
    if scenario_results:
        from resnet_deploy.bench.report import scenario_table

        out.print(scenario_table(scenario_results, width=out.width))


def _served_scenarios(served: list, scenarios: list[str], seconds: float, target_qps: float | None,
                      target_latency_ms: float, peak_qps: bool) -> list:
    if not scenarios:
        return []
    from resnet_deploy.bench.loadgen import (
        PERFORMANCE_SAMPLES,
        ScenarioSettings,
        expected_latency_ms,
        find_peak_qps,
    )
    from resnet_deploy.serving.client import ServedEngine, sample_batch

    results = []
    for model in served:
        batch = max(1, min(8, model.max_batch))
        options = ScenarioSettings(duration_s=seconds, min_queries=1, target_qps=target_qps,
                                   target_latency_ms=target_latency_ms, offline_batch=batch, server_batch=batch)
        with ServedEngine(model) as engine:
            samples = sample_batch(model, PERFORMANCE_SAMPLES)
            expected = expected_latency_ms(engine, samples)
            for name in scenarios:
                _say(f"LoadGen {name}: {model.name} at {model.url}")

                run = functools.partial(_served_run, engine, samples, name, options, model, expected)
                start_qps = target_qps or max(1.0, 500.0 / expected)
                if name == "server" and peak_qps:
                    results.append(find_peak_qps(run, start_qps))  # type: ignore[arg-type]
                else:
                    results.append(run(start_qps if name == "server" else None))
    return results


def _served_run(engine: object, samples: object, name: str, options: object, model: object, expected: float,
                qps: float | None) -> object:
    from resnet_deploy.bench.loadgen import run_scenario

    return run_scenario(engine, samples, name, options, model=model.name, artifact=model.url,  # type: ignore
                        expected_ms=expected, target_qps=qps)


def _check_accuracy_options(accuracy: bool, data: Path | None, images: int, *, from_artifacts: bool) -> None:
    if data is not None and not accuracy:
        raise UsageError("--data is the labelled images of --accuracy; add --accuracy (or drop --data)")
    if not accuracy:
        return
    if data is None:
        raise UsageError("--accuracy needs labelled images: --data DIR")
    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    if not from_artifacts:
        raise UsageError("--accuracy measures trained artifacts; give their paths instead of --depth/--arch "
                         "(random weights have no accuracy to keep)")
    if images < 1:
        raise UsageError(f"--accuracy-images must be at least 1, got {images}")


def _run_accuracy(plan: BenchPlan, data: Path, images: int, *, batch: int) -> list:
    from resnet_deploy.bench.accuracy import labelled_images
    from resnet_deploy.bench.loadgen import ScenarioSettings, run_plan_accuracy

    # Only the artifacts given: the PyTorch baseline bench builds from a card has random weights.
    cases = [case for case in plan.cases if case.artifact and Path(case.artifact).is_file()]
    options = ScenarioSettings(offline_batch=batch)
    return run_plan_accuracy(cases, labelled_images(data, images), options, progress=_say)


def _run(plan: BenchPlan, sizes: list[int], timing: TimingConfig, include_copies: bool) -> BenchReport:
    from resnet_deploy.bench.plan import run_plan, total_steps
    from resnet_deploy.environment import capture_environment, machine_load

    total = total_steps(plan, sizes, timing)
    before = machine_load()
    with progress_bar() as progress:
        task = progress.add_task("bench", total=total)
        report = run_plan(
            plan, batch_sizes=sizes, timing=timing, include_copies=include_copies,
            environment={},
            progress=lambda message: progress.update(task, description=plain(message)),
            on_step=lambda: progress.advance(task))
    report.environment = capture_environment()  # after the run: the threads it set
    report.environment["load"] = {"before": before, "after": machine_load()}
    return report


def _details(report: BenchReport) -> None:
    """--verbose: the machine's load around the run and every row's round medians."""
    from resnet_deploy.bench.report import load_line

    line = load_line(report.environment)
    if line:
        detail(line.removeprefix("- "))
    for r in report.results:
        rounds = ", ".join(f"{m:.3f}" for m in r.rounds_p50_ms)
        detail(f"{r.label()} batch {r.batch_size}: p50 per round {rounds} ms ({', '.join(map(str, r.rounds_calls))} "
               "calls)")


def _print_tables(report: BenchReport, *, wide: bool = False) -> None:
    from resnet_deploy.bench.report import results_tables
    from resnet_deploy.tables import table_console

    out = table_console()
    for table in results_tables(report, wide=wide, width=out.width):
        out.print(table)
    for note in report.notes:
        out.print(plain(f"note: {note}"))


def _say(message: str) -> None:
    info(message)  # info() shows it as literal text


def _parse_choices(text: str | None, allowed: tuple[str, ...], option: str) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UsageError(f"{option}: unknown value(s) {', '.join(unknown) or '(empty)'}; choose from "
                         f"{','.join(allowed)}")
    return list(dict.fromkeys(items))


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not sizes or any(size < 1 for size in sizes):
        raise UsageError(f"--batch-sizes {text!r}: batch sizes must be integers >= 1")
    return sorted(set(sizes))


def _timing(config_type: type[TimingConfig], *, warmup: int, iters: int | None, duration: float | None,
            rounds: int = 3) -> TimingConfig:
    if iters is not None and duration is not None:
        raise UsageError("give --iters or --duration, not both")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters must be at least 1, got {iters}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration}")
    if iters is not None:
        return config_type(warmup=warmup, iterations=iters, duration_s=None, rounds=rounds)
    return config_type(warmup=warmup, duration_s=duration if duration is not None else 3.0, rounds=rounds)


def _resolve_device(device: str) -> str:
    """`device` is parsed already (`_options.parse_device`: cpu, cuda or cuda:N); a CUDA one must exist here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here (no NVIDIA GPU or driver); "
                             "use --device cpu")
    return device
