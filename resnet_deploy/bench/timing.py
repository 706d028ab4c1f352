"""Latency and throughput of one engine at one batch size, measured the same way for every backend.

The method follows trtexec: warm-up calls are excluded; every timed call is synchronized with the
device (CUDA events time device-resident PyTorch calls); the per-call latency distribution (mean,
std, p50/p90/p95/p99, min, max) and the throughput in images/s are reported together with the
coefficient of variation, which flags a noisy machine or unlocked clocks. On a shared machine one case
run start to finish can meet a burst of load that the next case never sees, so `bench` interleaves its
cases: `rounds` alternating rounds, each giving every case x batch size a slice of its timed calls
(`bench/rounds.py`); a row's statistics pool its rounds, and `flag_results` flags a row whose rounds
disagree or that is implausible against the same case's other rows (it then gets no speed-up).
The input is random data of
the model's real shape, drawn fresh for each run (never zeros: some runtimes short-cut zeros).
On a GPU the host<->device copies are part of each call unless the caller asks for a device-resident
runner (`include_copies=False`). Engines are timed only through their contract (`Engine.prepare_run`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engines.base import Engine
from resnet_deploy.errors import UsageError
from resnet_deploy.samples import random_images

#: a coefficient of variation above this is reported as a warning (the machine or its clocks are noisy)
CV_WARN_THRESHOLD = 0.10
#: with --duration, never fewer timed calls than this, so the percentiles mean something
MIN_TIMED_CALLS = 10
#: interleaved rounds per row by default
DEFAULT_ROUNDS = 3
#: a row whose slowest round median is more than this factor above its fastest is flagged
ROUND_SPREAD_LIMIT = 1.5
#: the round check needs this many calls in every round (a median of fewer is noise itself)
MIN_CALLS_PER_ROUND = 3
#: untimed calls at the start of every later slice: the other cases ran in between and evicted the caches
REWARM_CALLS = 1


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure: `iterations` timed calls, or until `duration_s` has passed (at least `min_iterations`)."""

    warmup: int = 5
    iterations: int | None = None
    duration_s: float | None = 3.0
    min_iterations: int = MIN_TIMED_CALLS
    rounds: int = DEFAULT_ROUNDS

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if self.iterations is None and self.duration_s is None:
            raise ValueError("give iterations or duration_s")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")

    def describe(self) -> str:
        timed = f"{self.iterations} timed call{'s' * (self.iterations != 1)}" if self.iterations is not None else (
            f"timed calls for {self.duration_s:g} s (at least {self.min_iterations})")
        rounds = self.effective_rounds
        split = f", in {rounds} interleaved rounds" if rounds > 1 else ""
        return f"{self.warmup} warm-up call{'s' * (self.warmup != 1)}, {timed}{split}"

    @property
    def effective_rounds(self) -> int:
        """Never more rounds than timed calls."""
        return min(self.rounds, self.iterations) if self.iterations is not None else self.rounds

    def slice(self, index: int) -> TimingConfig:
        """What round `index` (0-based) of one row runs: its share of the calls or of the duration; the full
        warm-up before the first round, `REWARM_CALLS` before each later one."""
        rounds = self.effective_rounds
        warmup = self.warmup if index == 0 else min(self.warmup, REWARM_CALLS)
        if self.iterations is not None:
            share = self.iterations // rounds + (1 if index < self.iterations % rounds else 0)
            return TimingConfig(warmup=warmup, iterations=share, duration_s=None, rounds=1)
        assert self.duration_s is not None
        return TimingConfig(warmup=warmup, duration_s=self.duration_s / rounds,
                            min_iterations=-(-self.min_iterations // rounds), rounds=1)


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    mean: float
    std: float
    p50: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std / self.mean if self.mean > 0 else 0.0

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        data = np.asarray(samples_ms, dtype=np.float64)
        if data.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p95, p99 = np.percentile(data, [50, 90, 95, 99])
        return cls(mean=float(data.mean()), std=float(data.std(ddof=1)) if data.size > 1 else 0.0,
                   p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99),
                   min=float(data.min()), max=float(data.max()))


@dataclass
class BenchResult:
    """One backend/precision/batch-size measurement."""

    model: str
    backend: str
    precision: str
    batch_size: int
    device: str
    latency_ms: LatencyStats
    throughput_ips: float
    iterations: int
    warmup: int
    copies: str  # "included", "excluded" or "none (cpu)"
    timer: str  # "host" (wall clock around a synchronized call) or "cuda-events"
    artifact: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)  # engine.describe(): threads, providers, versions
    speedup: float | None = None  # over PyTorch FP32 at the same batch size, filled in by `add_speedups`
    rounds_p50_ms: list[float] = field(default_factory=list)  # the median of each interleaved round
    rounds_calls: list[int] = field(default_factory=list)  # timed calls in each round
    flags: list[str] = field(default_factory=list)  # why this row is not to be trusted (then: no speed-up)

    @property
    def cv(self) -> float:
        return self.latency_ms.cv

    @property
    def noisy(self) -> bool:
        return self.cv > CV_WARN_THRESHOLD

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cv"] = self.cv
        data["noisy"] = self.noisy
        return data


@dataclass(frozen=True)
class Skipped:
    """A requested backend/precision (or batch size) that could not run here, and why."""

    model: str
    backend: str
    precision: str
    reason: str
    batch_size: int | None = None  # None: every batch size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Runner:
    """One timed call. `timed_call()` runs the work once, synchronized, and returns its latency in ms."""

    timed_call: Callable[[], float]
    copies: str
    timer: str


def random_batch(shape: Sequence[int], rng: np.random.Generator | None = None) -> np.ndarray:
    """Real-shaped, normalized-image-like random input (standard normal), never zeros."""
    require_memory_for(shape, "the input batch")
    return random_images(shape, seed=rng if rng is not None else np.random.default_rng())


def require_memory_for(shape: Sequence[int], what: str, source: str = "") -> None:
    """Refuse a float32 tensor of `shape` larger than the memory available now (a static [600, 3, 4096, 4096]
    input is 112 GiB: allocating it ends in the kernel's OOM killer or swap, never in a measurement)."""
    needed = 4 * math.prod(int(d) for d in shape)
    available = available_memory_bytes()
    if available is not None and needed > available:
        dims = ", ".join(str(d) for d in shape)
        raise UsageError(f"{source}{what} [{dims}] float32 needs {needed / 2**30:.1f} GiB, more than the "
                         f"{available / 2**30:.1f} GiB of memory available here; bench a model with a smaller "
                         "input or batch")


def available_memory_bytes() -> int | None:
    """MemAvailable (Linux), else free physical pages; None when the system does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def host_runner(engine: Engine, batch: np.ndarray, *, copies: str) -> Runner:
    """The engine's own `infer` (host numpy in, host numpy out) and `synchronize`, timed on the host clock."""
    return Runner(engine.prepare_run(batch), copies=copies, timer="host")


def make_runner(engine: Engine, batch: np.ndarray, *, include_copies: bool = True) -> Runner:
    """The runner for this engine, through the engine contract only (`Engine.prepare_run`).

    Copies are only a question on a GPU: there, `include_copies=False` asks the engine for its copy-free
    path (inputs and outputs pre-bound on the device), and the engine says whether it had one. On the CPU
    the bound path is always taken, as the runtimes' own tools do (benchmark_app's preallocated tensors,
    ONNX Runtime's IOBinding): there are no host<->device copies to include, and a per-call input copy,
    output allocation or tensor creation would be our overhead, not the runtime's latency.
    """
    on_gpu = engine.device.startswith("cuda")
    prepared = engine.prepare_run(batch, copy_free=not on_gpu or not include_copies)
    # The PreparedRun itself is the timed call: it holds the buffers its bound run reads.
    return Runner(prepared, copies=prepared.copies if on_gpu else "none (cpu)", timer=prepared.timer)


def measure(runner: Runner, config: TimingConfig) -> list[float]:
    """Warm up, then collect per-call latencies (ms) until the iteration count or duration is reached."""
    for _ in range(config.warmup):
        runner.timed_call()
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        samples.append(runner.timed_call())
        if config.iterations is not None:
            if len(samples) >= config.iterations:
                break
        elif len(samples) >= config.min_iterations and time.perf_counter() - started >= config.duration_s:
            break
    return samples


def time_engine(
    engine: Engine,
    batch_size: int,
    config: TimingConfig,
    *,
    model: str,
    include_copies: bool = True,
    artifact: str | None = None,
    rng: np.random.Generator | None = None,
) -> BenchResult:
    """Time `engine` on a fresh random batch of `batch_size` (raises the engine's error for a batch it refuses)."""
    shape = (batch_size, *(d if d is not None else 1 for d in engine.input.shape[1:]))
    batch = random_batch(shape, rng)
    engine.check_input(batch)  # a wrong batch size fails here, before any timing
    runner = make_runner(engine, batch, include_copies=include_copies)
    rounds = [measure(runner, config.slice(index)) for index in range(config.effective_rounds)]
    return result_from_rounds(engine, batch_size, rounds, config, runner, model=model, artifact=artifact)


def result_from_rounds(engine: Engine, batch_size: int, rounds: Sequence[Sequence[float]], config: TimingConfig,
                       runner: Runner, *, model: str, artifact: str | None) -> BenchResult:
    """One row from its rounds' samples: the statistics pool every round; each round keeps its median."""
    samples = [sample for part in rounds for sample in part]
    stats = LatencyStats.from_samples(samples)
    result = BenchResult(
        model=model, backend=engine.name, precision=engine.precision, batch_size=batch_size, device=engine.device,
        latency_ms=stats, throughput_ips=batch_size * 1000.0 / stats.mean, iterations=len(samples),
        warmup=config.warmup, copies=runner.copies, timer=runner.timer, artifact=artifact, engine=engine.describe(),
        rounds_p50_ms=[float(np.median(part)) for part in rounds], rounds_calls=[len(part) for part in rounds],
    )
    if len(rounds) < config.effective_rounds:
        result.flags.append(f"interrupted: {len(rounds)} of {config.effective_rounds} rounds measured")
    return result


def flag_results(results: Sequence[BenchResult], *, spread_limit: float = ROUND_SPREAD_LIMIT) -> None:
    """Flag rows a busy machine may have disturbed: rounds that disagree (slowest round median more than
    `spread_limit` times the fastest), or a batch more than `spread_limit` times slower per call (p50) than a
    larger batch of the same case. Rows with fewer than `MIN_CALLS_PER_ROUND` calls in a round are not judged."""
    for r in results:
        medians = r.rounds_p50_ms
        if len(medians) > 1 and _enough_calls(r) and min(medians) > 0:
            ratio = max(medians) / min(medians)
            if ratio > spread_limit:
                per_round = ", ".join(fmt_number(m) for m in medians)
                r.flags.append(f"rounds disagree: p50 per round {per_round} ms ({ratio:.1f}x apart, "
                               f"limit {spread_limit:g}x)")
    cases: dict[tuple[str, str, str, str], list[BenchResult]] = {}
    for r in results:
        # Two artifacts of one model on the same backend and precision (full and mixed INT8) are two cases.
        cases.setdefault((r.model, r.backend, r.precision, r.device, r.artifact), []).append(r)
    for rows in cases.values():
        rows = sorted([r for r in rows if _enough_calls(r)], key=lambda r: r.batch_size)
        for i, small in enumerate(rows):
            larger = [big for big in rows[i + 1:] if small.latency_ms.p50 > spread_limit * big.latency_ms.p50]
            if larger:
                big = larger[0]
                small.flags.append(f"implausible: batch {small.batch_size} is slower per call "
                                   f"(p50 {fmt_number(small.latency_ms.p50)} ms) than batch {big.batch_size} "
                                   f"(p50 {fmt_number(big.latency_ms.p50)} ms)")


def _enough_calls(r: BenchResult) -> bool:
    """A median of fewer calls than this is noise itself: such a row is never judged (nor judged against)."""
    return bool(r.rounds_calls) and min(r.rounds_calls) >= MIN_CALLS_PER_ROUND


def fmt_number(value: float) -> str:
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def add_speedups(results: Sequence[BenchResult]) -> None:
    """Fill `speedup` = PyTorch FP32 mean latency / this mean latency, per model and batch size. A flagged
    row gets none, and neither does any row whose baseline is flagged."""
    baseline = {(r.model, r.batch_size): r.latency_ms.mean for r in results
                if r.backend == "torch" and r.precision == "fp32" and not r.flagged}
    for result in results:
        base = baseline.get((result.model, result.batch_size))
        result.speedup = base / result.latency_ms.mean if base and not result.flagged else None


INTERLEAVING = ("cases interleaved: every round gives each case x batch size a slice of its timed calls, "
                "round-robin (forward in even rounds, backward in odd ones); a row pools its rounds")


@dataclass
class BenchReport:
    """Everything one `bench` run measured, what it skipped, and where."""

    environment: dict[str, Any]
    results: list[BenchResult]
    skipped: list[Skipped]
    timing: TimingConfig
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM: `results` holds the rows measured before it
    planned_rows: int | None = None  # case x batch size combinations the run set out to measure
    command: str | None = None  # the command line that asked for the run (`bench`), first in the JSON
    scenarios: list[Any] | None = None  # LoadGen's `ScenarioResult`s, when scenarios or accuracy were asked for

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"command": self.command} if self.command is not None else {}),
            "environment": self.environment,
            "timing": {**asdict(self.timing), "method": self.timing.describe(),
                       "interleaving": INTERLEAVING, "cv_warn_threshold": CV_WARN_THRESHOLD,
                       "round_spread_limit": ROUND_SPREAD_LIMIT},
            "interrupted": self.interrupted,
            "planned_rows": self.planned_rows,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": self.notes,
            **({"scenarios": [r.to_dict() for r in self.scenarios]} if self.scenarios is not None else {}),
        }

    def flagged(self) -> list[BenchResult]:
        return [r for r in self.results if r.flagged]

    def best(self, model: str, batch_size: int) -> BenchResult | None:
        rows = [r for r in self.results if r.model == model and r.batch_size == batch_size]
        return min(rows, key=lambda r: r.latency_ms.mean) if rows else None

    def noisy(self) -> list[BenchResult]:
        return [r for r in self.results if r.noisy]
