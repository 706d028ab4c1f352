"""MLPerf Inference scenarios through MLPerf's own LoadGen (`mlcommons-loadgen`): SingleStream (p90 latency),
Offline (samples/s) and Server (Poisson arrivals at a target QPS, p99 bound, VALID/INVALID), a peak-QPS search for
Server, and LoadGen's accuracy mode on real images.

Any engine of the contract serves as the system under test. LoadGen writes its logs into a temporary folder;
the summary it writes is parsed into `ScenarioResult`. Run settings (minimum duration and query count) default to
LoadGen's own; shorter ones are allowed and the result then says it is not a valid MLPerf run.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from resnet_deploy.bench.request import SCENARIO_NAMES
from resnet_deploy.errors import BackendUnavailable, UsageError
from resnet_deploy.samples import random_images

SCENARIOS = SCENARIO_NAMES
EXTRA = "pip install 'resnet-deploy[loadgen]'"
PERFORMANCE_SAMPLES = 64  # random images resident in memory, as LoadGen's performance sample set
DEFAULT_SERVER_LATENCY_MS = 15.0  # MLPerf's bound for ResNet-50 in the Server scenario
MLPERF_ACCURACY_FRACTION = 0.99  # MLPerf: the submission keeps at least 99 % of the FP32 reference's top-1
LOADGEN_MIN_DURATION_S = 600.0  # LoadGen's default minimum duration (what a run without --duration lasts at least)
MIN_TARGET_QPS = 0.1  # a query every 10 s: below that a run waits hours for its first queries
MAX_SCHEDULED_QUERIES = 5_000_000  # LoadGen schedules every query of a Server run in advance, in memory


def check_server_numbers(target_qps: float | None, target_latency_ms: float, duration_s: float | None) -> None:
    """Refuse Server-scenario numbers that cannot make a run (NaN, infinite, not positive), or that make one that
    never ends (a query a week) or fills the memory (LoadGen schedules qps x duration queries up front): before any
    work, so nothing is measured for a run that cannot happen."""
    if not math.isfinite(target_latency_ms) or target_latency_ms <= 0:
        raise UsageError(f"--target-latency-ms must be a positive number of milliseconds, got {target_latency_ms}")
    if target_qps is None:
        return
    if not math.isfinite(target_qps) or target_qps <= 0:
        raise UsageError(f"--target-qps must be a positive, finite number of queries per second, got {target_qps}")
    seconds = duration_s if duration_s is not None else LOADGEN_MIN_DURATION_S
    if target_qps < MIN_TARGET_QPS or target_qps * seconds < 1:
        raise UsageError(f"--target-qps {target_qps:g}: fewer than one query in the run's {seconds:g} s (and at "
                         f"least {MIN_TARGET_QPS:g} queries/s); the run would wait for its queries for hours")
    if target_qps * seconds > MAX_SCHEDULED_QUERIES:
        raise UsageError(f"--target-qps {target_qps:g} for {seconds:g} s is {target_qps * seconds:.3g} queries, "
                         f"which LoadGen schedules in memory up front (at most {MAX_SCHEDULED_QUERIES:,} here): "
                         "lower the rate or give a shorter --duration")


@dataclass(frozen=True)
class ScenarioSettings:
    duration_s: float | None = None  # None: LoadGen's minimum duration
    min_queries: int | None = None  # None: LoadGen's minimum query count
    target_qps: float | None = None  # Server; None: half of what SingleStream sustained
    target_latency_ms: float = DEFAULT_SERVER_LATENCY_MS  # Server's p99 bound
    offline_batch: int = 8
    server_batch: int = 8  # the most queued samples the Server SUT runs as one batch


@dataclass
class ScenarioResult:
    scenario: str
    model: str
    backend: str
    precision: str
    artifact: str | None
    valid: bool  # LoadGen's verdict on this run's own settings
    mlperf_valid: bool  # also run with LoadGen's default duration and query count
    latency_ms: dict[str, float]  # p50, p90, p95, p99, mean, min, max
    samples_per_s: float | None
    queries: int | None
    target_qps: float | None = None
    target_latency_ms: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    top1: float | None = None  # accuracy mode
    images: int | None = None  # accuracy mode: how many labelled images LoadGen issued
    reference_top1: float | None = None  # accuracy mode: the FP32 row of the same model, when the run has one
    meets_mlperf_accuracy: bool | None = None  # top1 >= 99 % of reference_top1; None without a reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_loadgen() -> Any:
    """The `mlperf_loadgen` module; a missing extra is one error line naming what to install."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise BackendUnavailable(f"MLPerf scenarios need MLPerf's LoadGen: {EXTRA}") from None
    return mlperf_loadgen


def parse_summary(text: str) -> dict[str, str]:
    """`key : value` lines of `mlperf_log_summary.txt` (first occurrence wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([^:*]+?)\s*:\s*(.+?)\s*$", line)
        if match and match.group(1) not in fields:
            fields[match.group(1)] = match.group(2)
    return fields


def _latencies(fields: dict[str, str]) -> dict[str, float]:
    names = {"p50": "50.00 percentile latency (ns)", "p90": "90.00 percentile latency (ns)",
             "p95": "95.00 percentile latency (ns)", "p99": "99.00 percentile latency (ns)",
             "mean": "Mean latency (ns)", "min": "Min latency (ns)", "max": "Max latency (ns)"}
    return {key: float(fields[name]) / 1e6 for key, name in names.items() if name in fields}


class _SystemUnderTest:
    """Answers LoadGen's queries with an engine: inline for SingleStream/Offline, from a worker thread that batches
    whatever has queued for Server (LoadGen's issue thread must not block there).

    SingleStream's performance run goes through the engine's bound batch-1 call, the one the per-call bench
    times: each query's sample is copied into the array that call reads in place (`PreparedRun.input`), so
    LoadGen's p90 and bench's p90 time the same call. Engines without one (a GPU, a cast) use `infer`."""

    def __init__(self, engine: Engine, samples: np.ndarray, *, batch: int, threaded: bool, keep_top1: bool) -> None:
        self.engine, self.samples, self.batch, self.threaded = engine, samples, batch, threaded
        self.predictions: dict[int, int] = {}
        self.keep_top1 = keep_top1
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, daemon=True) if threaded else None
        self.error: BaseException | None = None
        self._abandoned = False
        self._bound = None
        if batch == 1 and not threaded and not keep_top1:
            bound = engine.prepare_run(samples[:1].copy(), copy_free=True)
            self._bound = bound if bound.input is not None else None

    def start(self) -> None:
        if self._worker is not None:
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()

    def abandon(self) -> None:
        """Interrupted: answer every further query without running the engine (LoadGen waits for each answer)."""
        self._abandoned = True

    def issue(self, query_samples: Sequence[Any]) -> None:
        if self._abandoned:
            lg = require_loadgen()
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0) for sample in query_samples])
            return
        if self.threaded:
            for sample in query_samples:
                self._queue.put(sample)
            return
        for start in range(0, len(query_samples), self.batch):
            self._run(list(query_samples[start:start + self.batch]))

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            chunk = [first]
            while len(chunk) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                chunk.append(item)
            self._run(chunk)

    def _run(self, chunk: list[Any]) -> None:
        lg = require_loadgen()
        if self._abandoned:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0) for sample in chunk])
            return
        if self._bound is not None and len(chunk) == 1:
            try:
                np.copyto(self._bound.input, self.samples[chunk[0].index: chunk[0].index + 1])
                self._bound()
            except BaseException as exc:  # answered below all the same: LoadGen waits for every query
                self.error = self.error or exc
            lg.QuerySamplesComplete([lg.QuerySampleResponse(chunk[0].id, 0, 0)])
            return
        try:
            logits = self.engine.infer(self.samples[[sample.index for sample in chunk]])
        except BaseException as exc:  # LoadGen waits forever for an unanswered query: answer, then report
            self.error = self.error or exc
            logits = None
        if logits is not None and self.keep_top1:
            for sample, row in zip(chunk, logits, strict=True):
                self.predictions[sample.index] = int(np.argmax(row))
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0) for sample in chunk])


def _start_test(lg: Any, sut_impl: _SystemUnderTest, sut: Any, qsl: Any, settings: Any, log_settings: Any) -> bool:
    """LoadGen's run, in a thread: the main thread keeps waiting in Python, where Ctrl-C and SIGTERM arrive (inside
    LoadGen's C++ call they wait until the run ends, which for a Server run can be hours). On an interrupt the SUT
    answers every further query at once without running the engine, and the run is given a moment to wind down;
    False when it is still running (LoadGen has no way to abort a run)."""
    failure: list[BaseException] = []
    done = threading.Event()  # not Thread.join: a KeyboardInterrupt inside join() can leave is_alive() False

    def run() -> None:
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="loadgen", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        sut_impl.abandon()
        if not done.wait(2.0):
            atexit.register(_exit_past_loadgen)
            return False
        sut_impl.stop()
        raise
    if failure:
        raise failure[0]
    return True


def _exit_past_loadgen() -> None:
    """At exit, with an abandoned LoadGen run still in its thread: C++'s exit would destroy that running thread and
    abort (SIGABRT, exit 134). Everything of ours is cleaned up by now (atexit runs last); leave at once, with the
    status an interrupt gets."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)


def _settings(lg: Any, scenario: str, options: ScenarioSettings, *, expected_ms: float, target_qps: float | None,
              accuracy: bool) -> Any:
    settings = lg.TestSettings()
    settings.scenario = {"single-stream": lg.TestScenario.SingleStream, "offline": lg.TestScenario.Offline,
                         "server": lg.TestScenario.Server}[scenario]
    settings.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    settings.single_stream_expected_latency_ns = max(1, int(expected_ms * 1e6))
    settings.offline_expected_qps = max(1.0, options.offline_batch * 1000.0 / max(expected_ms, 1e-3) / 2)
    if target_qps is not None:
        settings.server_target_qps = target_qps
    settings.server_target_latency_ns = int(options.target_latency_ms * 1e6)
    if options.duration_s is not None:
        settings.min_duration_ms = int(options.duration_s * 1000)
    if options.min_queries is not None:
        settings.min_query_count = options.min_queries
    return settings


def run_scenario(engine: Engine, samples: np.ndarray, scenario: str, options: ScenarioSettings, *, model: str,
                 artifact: str | None, expected_ms: float, target_qps: float | None = None,
                 labels: np.ndarray | None = None) -> ScenarioResult:
    """One LoadGen run. With `labels`, LoadGen's accuracy mode: every sample once, top-1 from the answers."""
    if scenario not in SCENARIOS:
        raise UsageError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    lg = require_loadgen()
    accuracy = labels is not None
    batch = {"single-stream": 1, "offline": options.offline_batch, "server": options.server_batch}[scenario]
    if engine.input.shape[0] is not None and engine.input.shape[0] != batch:
        raise UsageError(f"{artifact or model}: static batch {engine.input.shape[0]}; the {scenario} scenario runs "
                         f"batch {batch} (export with a dynamic batch)")
    settings = _settings(lg, scenario, options, expected_ms=expected_ms, target_qps=target_qps, accuracy=accuracy)
    sut_impl = _SystemUnderTest(engine, samples, batch=batch, threaded=scenario == "server", keep_top1=accuracy)
    count = len(samples)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-loadgen-") as logs:
        log_settings = lg.LogSettings()
        log_settings.log_output.outdir = logs
        log_settings.log_output.copy_summary_to_stdout = False
        sut = lg.ConstructSUT(sut_impl.issue, lambda: None)
        qsl = lg.ConstructQSL(count, min(count, PERFORMANCE_SAMPLES), lambda ids: None, lambda ids: None)
        sut_impl.start()
        finished = _start_test(lg, sut_impl, sut, qsl, settings, log_settings)
        if not finished:  # interrupted and LoadGen still running: its thread still uses them, nothing to destroy
            raise KeyboardInterrupt
        sut_impl.stop()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        summary = (Path(logs) / "mlperf_log_summary.txt").read_text() if not accuracy else ""
    if sut_impl.error is not None:
        raise sut_impl.error
    return _result(scenario, engine, summary, options, model=model, artifact=artifact, target_qps=target_qps,
                   labels=labels, predictions=sut_impl.predictions)


def _result(scenario: str, engine: Engine, summary: str, options: ScenarioSettings, *, model: str,
            artifact: str | None, target_qps: float | None, labels: np.ndarray | None,
            predictions: dict[int, int]) -> ScenarioResult:
    fields = parse_summary(summary)
    notes = []
    shortened = options.duration_s is not None or options.min_queries is not None
    if shortened:
        notes.append("shorter than LoadGen's minimum duration/query count: not a valid MLPerf result")
    notes += unmet_constraints(fields)
    rate_key = {"single-stream": "QPS w/o loadgen overhead", "offline": "Samples per second",
                "server": "Completed samples per second"}[scenario]
    top1 = None
    if labels is not None:
        hits = sum(predictions.get(i) == int(label) for i, label in enumerate(labels))
        top1 = 100.0 * hits / len(labels)
    valid = fields.get("Result is") == "VALID" or labels is not None
    return ScenarioResult(
        scenario=scenario, model=model, backend=engine.name, precision=engine.precision, artifact=artifact,
        valid=valid, mlperf_valid=valid and not shortened, latency_ms=_latencies(fields),
        samples_per_s=float(fields[rate_key]) if rate_key in fields else None,
        queries=None, target_qps=target_qps if scenario == "server" else None,
        target_latency_ms=options.target_latency_ms if scenario == "server" else None,
        settings={"min_duration_s": options.duration_s, "min_queries": options.min_queries,
                  "batch": {"single-stream": 1, "offline": options.offline_batch,
                            "server": options.server_batch}[scenario]},
        notes=notes, top1=top1, images=len(labels) if labels is not None else None)


# LoadGen's summary lines that make a run INVALID when they say NO, and what each means to a user.
CONSTRAINTS = {
    "Performance constraints satisfied": "the latency bound was exceeded",
    "Min duration satisfied": "the run was shorter than its minimum duration",
    "Min queries satisfied": "too few queries were issued",
    "Early stopping satisfied": "too few queries to certify the percentile bound statistically (run longer)",
}


def unmet_constraints(fields: dict[str, str]) -> list[str]:
    """Why LoadGen judged a run INVALID, one note per constraint its summary says NO to."""
    return [f"LoadGen: {meaning} ({name}: NO)" for name, meaning in CONSTRAINTS.items()
            if fields.get(name, "").upper().startswith("NO")]


def judge_mlperf_accuracy(results: Sequence[ScenarioResult]) -> None:
    """MLPerf's criterion: a result keeps at least 99 % of the FP32 reference's top-1. The reference is the first
    FP32 row of the same model in this run; a model without one is left unjudged (None) and says so."""
    reference: dict[str, float] = {}
    for r in results:
        if r.precision == "fp32" and r.top1 is not None:
            reference.setdefault(r.model, r.top1)
    for r in results:
        if r.top1 is None:
            continue
        r.reference_top1 = reference.get(r.model)
        if r.reference_top1 is None:
            r.notes.append(f"{r.model}: no FP32 row in this run, so MLPerf's 99 % criterion was not judged")
        else:
            r.meets_mlperf_accuracy = r.top1 >= MLPERF_ACCURACY_FRACTION * r.reference_top1


def run_plan_accuracy(cases: Sequence[Any], labelled: Callable[[Any], tuple[np.ndarray, np.ndarray]],
                      options: ScenarioSettings, *, progress: Callable[[str], None] = lambda message: None,
                      ) -> list[ScenarioResult]:
    """LoadGen's accuracy mode on every bench case: every labelled image once, Offline (batched), top-1 from the
    answers, then MLPerf's criterion against the FP32 row. `labelled(case)` gives the case's images, already
    through its own preprocessing, and their labels."""
    require_loadgen()
    results = []
    for case in cases:
        samples, labels = labelled(case)
        progress(f"LoadGen accuracy: {case.model} {case.backend} {case.precision} on {len(labels)} images")
        with case.open() as engine:
            results.append(run_scenario(engine, samples, "offline", options, model=case.model,
                                        artifact=case.artifact, expected_ms=expected_latency_ms(engine, samples),
                                        labels=labels))
    judge_mlperf_accuracy(results)
    return results


def find_peak_qps(run: Callable[[float], ScenarioResult], start_qps: float, *, steps: int = 6) -> ScenarioResult:
    """The highest Server target QPS LoadGen judges VALID: double until INVALID, then bisect `steps` times."""
    low: ScenarioResult | None = None
    high_qps = start_qps
    result = run(high_qps)
    while result.valid and steps > 0:
        low, high_qps = result, high_qps * 2
        result = run(high_qps)
        steps -= 1
    low_qps = low.target_qps if low is not None else 0.0
    for _ in range(steps):
        middle = (low_qps + high_qps) / 2
        result = run(middle)
        if result.valid:
            low, low_qps = result, middle
        else:
            high_qps = middle
    if low is None:
        why = "; ".join(note for note in result.notes if note.startswith("LoadGen:")) or "INVALID"
        p99 = result.latency_ms.get("p99")
        measured = f", p99 {p99:.1f} ms" if p99 is not None else ""
        raise UsageError(f"no Server target QPS down to {high_qps:.3g} was VALID (last run{measured}: {why}); "
                         "give a longer --duration (LoadGen's default is 600 s) or a looser --target-latency-ms")
    low.notes.append(f"peak QPS: highest VALID target found by doubling and bisection (INVALID at {high_qps:.4g})")
    return low


def expected_latency_ms(engine: Engine, samples: np.ndarray, calls: int = 10) -> float:
    """A quick median of single-sample calls: LoadGen sizes its query counts from it."""
    engine.infer(samples[:1])
    timings = []
    for i in range(calls):
        start = time.perf_counter()
        engine.infer(samples[i % len(samples): i % len(samples) + 1])
        timings.append((time.perf_counter() - start) * 1000)
    return float(np.median(timings))


def run_plan_scenarios(cases: Sequence[Any], scenarios: Sequence[str], options: ScenarioSettings, *,
                       peak_qps: bool = False, progress: Callable[[str], None] = lambda message: None,
                       ) -> list[ScenarioResult]:
    """Every scenario on every bench case (`bench.plan.BenchCase`: model, backend, precision, open())."""
    require_loadgen()  # a missing extra is one error before any engine is opened
    results = []
    for case in cases:
        with case.open() as engine:
            shape = [PERFORMANCE_SAMPLES, *(d or 1 for d in engine.input.shape[1:])]
            samples = random_images(shape)
            expected = expected_latency_ms(engine, samples)
            for scenario in scenarios:
                progress(f"LoadGen {scenario}: {case.model} {case.backend} {case.precision}")

                def run(qps: float | None, scenario: str = scenario, engine: Engine = engine,
                        samples: np.ndarray = samples, case: Any = case, expected: float = expected,
                        ) -> ScenarioResult:
                    return run_scenario(engine, samples, scenario, options, model=case.model,
                                        artifact=case.artifact, expected_ms=expected, target_qps=qps)

                start_qps = options.target_qps or max(1.0, 500.0 / expected)  # half what one stream sustains
                if scenario == "server" and peak_qps:
                    results.append(find_peak_qps(run, start_qps))
                else:
                    results.append(run(start_qps if scenario == "server" else None))
    return results
