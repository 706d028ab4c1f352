"""`bench` as one library call: `run_bench(BenchRequest) -> BenchReport`.

Checks the request, plans the cases (`bench/plan.py`: artifacts given, or built for an architecture), times
them in interleaved rounds, runs the MLPerf LoadGen scenarios and accuracy mode asked for, says what
deserves a warning, and writes the Markdown report and the plot. Raises `UsageError`/`BackendUnavailable`
before anything is measured; the command only renders the report it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_deploy.bench.request import DEFAULT_DURATION_S, BenchRequest, check_request
from resnet_deploy.errors import UsageError

if TYPE_CHECKING:
    from resnet_deploy.bench.loadgen import ScenarioResult
    from resnet_deploy.bench.plan import BenchPlan
    from resnet_deploy.bench.timing import BenchReport, TimingConfig


def _quiet(message: str) -> None:
    return None


@dataclass(frozen=True)
class StepProgress:
    """What the timing loop reports: a line before each step, and each step done."""

    say: Callable[[str], None] = _quiet
    step: Callable[[], None] = lambda: None


@contextlib.contextmanager
def _no_steps(total: int) -> Iterator[StepProgress]:
    yield StepProgress()


@dataclass
class BenchListener:
    """Where the run reports: `info`/`warn`/`detail` get one line each; `steps(total)` opens the progress of the
    timing loop (total steps: rows x rounds) for as long as it runs."""

    info: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet
    detail: Callable[[str], None] = _quiet
    steps: Callable[[int], AbstractContextManager[StepProgress]] = field(default=_no_steps)


def run_bench(request: BenchRequest, listener: BenchListener | None = None) -> BenchReport:
    """Measure what `request` asks for. Ctrl-C during the timing keeps the rows measured (`report.interrupted`)."""
    say = listener or BenchListener()
    check_request(request)
    timing = timing_config(request.warmup, request.iters, request.duration, request.rounds)

    from resnet_deploy.bench.cache import default_cache_dir
    from resnet_deploy.bench.plan import check_requested_backends, plan_for_architecture_or_artifacts

    check_requested_backends(request.backends or (), explicit=request.backends is not None)
    device = resolve_device(request.device)
    if request.exclude_copies and not device.startswith("cuda"):
        say.info("note: --exclude-copies has no effect on the CPU (there are no host<->device copies)")
    if "server" in request.scenarios:
        from resnet_deploy.bench.loadgen import check_server_numbers

        check_server_numbers(request.target_qps, request.target_latency_ms, request.duration)  # before any work
    sizes = sorted(set(request.batch_sizes))
    plan = plan_for_architecture_or_artifacts(
        request.arch, list(request.artifacts), backends=request.backends, precisions=request.precisions,
        batch_sizes=sizes, device=device, threads=request.threads, include_copies=not request.exclude_copies,
        cache_dir=request.cache_dir or default_cache_dir(), calib_data=request.calib_data,
        calib_samples=request.calib_samples, progress=say.info)
    if request.scenarios or request.accuracy:
        from resnet_deploy.bench.loadgen import require_loadgen

        require_loadgen()  # a missing extra is one error line before anything is measured
    report = _measure(plan, sizes, timing, not request.exclude_copies, say)
    scenarios: list[ScenarioResult] = []
    if not report.interrupted:
        scenarios = _run_scenarios(plan, request, sizes, say)
        if request.accuracy and request.data is not None:
            scenarios += _run_accuracy(plan, request.data, request.accuracy_images, batch=max(sizes), say=say)
    report.command = request.command
    report.scenarios = scenarios if request.scenarios or request.accuracy else None
    _warn_and_detail(report, say)
    _write_files(report, request, say)
    return report


def timing_config(warmup: int, iters: int | None, duration: float | None, rounds: int) -> TimingConfig:
    """The flags' numbers as a `TimingConfig`: a number of calls, or a duration (3 s when neither is given)."""
    from resnet_deploy.bench.request import check_timing_numbers
    from resnet_deploy.bench.timing import TimingConfig

    check_timing_numbers(warmup, iters, duration)
    if iters is not None:
        return TimingConfig(warmup=warmup, iterations=iters, duration_s=None, rounds=rounds)
    return TimingConfig(warmup=warmup, duration_s=duration if duration is not None else DEFAULT_DURATION_S,
                        rounds=rounds)


def resolve_device(device: str) -> str:
    """`device` is parsed already (`_options.parse_device`: cpu, cuda or cuda:N); a CUDA one must exist here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here (no NVIDIA GPU or driver); "
                             "use --device cpu")
    return device


def _measure(plan: BenchPlan, sizes: list[int], timing: TimingConfig, include_copies: bool,
             say: BenchListener) -> BenchReport:
    from resnet_deploy.bench.plan import run_plan, total_steps
    from resnet_deploy.environment import capture_environment, machine_load

    before = machine_load()
    with say.steps(total_steps(plan, sizes, timing)) as progress:
        report = run_plan(plan, batch_sizes=sizes, timing=timing, include_copies=include_copies, environment={},
                          progress=progress.say, on_step=progress.step)
    report.environment = capture_environment()  # after the run: the threads it set
    report.environment["load"] = {"before": before, "after": machine_load()}
    return report


def _run_scenarios(plan: BenchPlan, request: BenchRequest, sizes: list[int],
                   say: BenchListener) -> list[ScenarioResult]:
    if not request.scenarios:
        return []
    from resnet_deploy.bench.loadgen import ScenarioSettings, run_plan_scenarios

    largest = max(sizes)
    options = ScenarioSettings(duration_s=request.duration, min_queries=1 if request.duration is not None else None,
                               target_qps=request.target_qps, target_latency_ms=request.target_latency_ms,
                               offline_batch=largest, server_batch=largest)
    return run_plan_scenarios(plan.cases, request.scenarios, options, peak_qps=request.peak_qps, progress=say.info)


def _run_accuracy(plan: BenchPlan, data: Path, images: int, *, batch: int,
                  say: BenchListener) -> list[ScenarioResult]:
    from resnet_deploy.bench.accuracy import labelled_images
    from resnet_deploy.bench.loadgen import ScenarioSettings, run_plan_accuracy

    # Only the artifacts given: the PyTorch baseline bench builds from a card has random weights.
    cases = [case for case in plan.cases if case.artifact and Path(case.artifact).is_file()]
    options = ScenarioSettings(offline_batch=batch)
    return run_plan_accuracy(cases, labelled_images(data, images), options, progress=say.info)


def _warn_and_detail(report: BenchReport, say: BenchListener) -> None:
    """Rows too noisy to trust, each row's round medians (detail), and rows flagged for showing no speed-up."""
    from resnet_deploy.bench.report import load_line
    from resnet_deploy.bench.timing import CV_WARN_THRESHOLD

    noisy = report.noisy()
    if noisy:
        worst = max(noisy, key=lambda r: r.cv)
        say.warn(f"{len(noisy)} of {len(report.results)} results vary a lot between calls (coefficient of variation "
                 f"above {CV_WARN_THRESHOLD:.0%}, marked ⚠; worst {worst.cv:.0%} for {worst.label()} batch "
                 f"{worst.batch_size}): a busy machine or unlocked clocks; rerun on a quiet machine or with more "
                 "--iters/--duration")
    line = load_line(report.environment)
    if line:
        say.detail(line.removeprefix("- "))
    for r in report.results:
        rounds = ", ".join(f"{m:.3f}" for m in r.rounds_p50_ms)
        say.detail(f"{r.label()} batch {r.batch_size}: p50 per round {rounds} ms "
                   f"({', '.join(map(str, r.rounds_calls))} calls)")
    flagged = report.flagged()
    if flagged:
        say.warn(f"{len(flagged)} of {len(report.results)} rows are flagged and show no speed-up (rounds that "
                 "disagree, or slower than a larger batch): the machine was busy while they ran; rerun on a quiet "
                 "machine")


def _write_files(report: BenchReport, request: BenchRequest, say: BenchListener) -> None:
    """The plot, then the Markdown report that links it (both written atomically)."""
    plot = request.plot if request.plot is not None and report.results else None
    if plot is not None:
        from resnet_deploy.bench.report import write_plot

        write_plot(report, plot)
        say.info(f"plot written to {plot}")
    elif request.plot is not None:
        say.warn(f"nothing was measured, so no plot was written to {request.plot}")
    if request.report is not None:
        from resnet_deploy.bench.report import write_markdown

        write_markdown(report, request.report, command=request.command, plot=plot, scenarios=report.scenarios or [])
        say.info(f"report written to {request.report}")
