"""Latency and throughput of one engine at one batch size, measured the same way for every backend.

The method follows trtexec: warm-up calls are excluded; every timed call is synchronized with the
device (CUDA events time device-resident PyTorch calls); the per-call latency distribution (mean,
std, p50/p90/p95/p99, min, max) and the throughput in images/s are reported together with the
coefficient of variation, which flags a noisy machine or unlocked clocks. The input is random data of
the model's real shape, drawn fresh for each run (never zeros: some runtimes short-cut zeros).
On a GPU the host<->device copies are part of each call unless the caller asks for a device-resident
runner (`include_copies=False`). Engines are timed only through their contract (`Engine.prepare_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engines.base import Engine

#: a coefficient of variation above this is reported as a warning (the machine or its clocks are noisy)
CV_WARN_THRESHOLD = 0.10
#: with --duration, never fewer timed calls than this, so the percentiles mean something
MIN_TIMED_CALLS = 10


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure: `iterations` timed calls, or until `duration_s` has passed (at least `min_iterations`)."""

    warmup: int = 5
    iterations: int | None = None
    duration_s: float | None = 3.0
    min_iterations: int = MIN_TIMED_CALLS

    def __post_init__(self) -> None:
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
        return f"{self.warmup} warm-up call{'s' * (self.warmup != 1)}, {timed}"


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

    @property
    def cv(self) -> float:
        return self.latency_ms.cv

    @property
    def noisy(self) -> bool:
        return self.cv > CV_WARN_THRESHOLD

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
    rng = rng if rng is not None else np.random.default_rng()
    return rng.standard_normal(tuple(shape), dtype=np.float32)


def host_runner(engine: Engine, batch: np.ndarray, *, copies: str) -> Runner:
    """The engine's own `infer` (host numpy in, host numpy out) and `synchronize`, timed on the host clock."""
    return Runner(engine.prepare_run(batch), copies=copies, timer="host")


def make_runner(engine: Engine, batch: np.ndarray, *, include_copies: bool = True) -> Runner:
    """The runner for this engine, through the engine contract only (`Engine.prepare_run`).

    Copies are only a question on a GPU: there, `include_copies=False` asks the engine for its copy-free
    path (inputs and outputs pre-bound on the device), and the engine says whether it had one.
    """
    on_gpu = engine.device.startswith("cuda")
    prepared = engine.prepare_run(batch, copy_free=on_gpu and not include_copies)
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
    samples = measure(runner, config)
    stats = LatencyStats.from_samples(samples)
    return BenchResult(
        model=model, backend=engine.name, precision=engine.precision, batch_size=batch_size, device=engine.device,
        latency_ms=stats, throughput_ips=batch_size * 1000.0 / stats.mean, iterations=len(samples),
        warmup=config.warmup, copies=runner.copies, timer=runner.timer, artifact=artifact, engine=engine.describe(),
    )


def add_speedups(results: Sequence[BenchResult]) -> None:
    """Fill `speedup` = PyTorch FP32 mean latency / this mean latency, per model and batch size."""
    baseline = {(r.model, r.batch_size): r.latency_ms.mean for r in results
                if r.backend == "torch" and r.precision == "fp32"}
    for result in results:
        base = baseline.get((result.model, result.batch_size))
        result.speedup = base / result.latency_ms.mean if base else None


@dataclass
class BenchReport:
    """Everything one `bench` run measured, what it skipped, and where."""

    environment: dict[str, Any]
    results: list[BenchResult]
    skipped: list[Skipped]
    timing: TimingConfig
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "timing": {**asdict(self.timing), "method": self.timing.describe(),
                       "cv_warn_threshold": CV_WARN_THRESHOLD},
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": self.notes,
        }

    def best(self, model: str, batch_size: int) -> BenchResult | None:
        rows = [r for r in self.results if r.model == model and r.batch_size == batch_size]
        return min(rows, key=lambda r: r.latency_ms.mean) if rows else None

    def noisy(self) -> list[BenchResult]:
        return [r for r in self.results if r.noisy]
