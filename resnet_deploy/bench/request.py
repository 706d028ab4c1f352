"""What a `bench` run is asked to do (`BenchRequest`, `ServedBenchRequest`), and the checks on it.

Light on purpose (no numpy, no engines): `bench --help` reads the choices here. Every check raises the
project's `UsageError`, worded after the command-line flag, before anything is built or measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnet_deploy import registry
from resnet_deploy.errors import UsageError

ALL_BACKENDS = registry.backend_names()  # the registry's order: PyTorch (the baseline) first
ALL_PRECISIONS = registry.precision_names()
SCENARIO_NAMES = ("single-stream", "offline", "server")  # MLPerf's, as `bench/loadgen.py` runs them
DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_DURATION_S = 3.0  # timed seconds per row (and per served level) when neither --iters nor --duration is given


@dataclass(frozen=True)
class BenchRequest:
    """Artifacts (or one architecture with random weights) to time on every backend, precision and batch size."""

    artifacts: tuple[Path, ...] = ()
    arch: str | None = None  # instead of artifacts: build the ONNX models (and plans) into `cache_dir`
    backends: tuple[str, ...] | None = None  # None: all; those unavailable here become skipped rows
    precisions: tuple[str, ...] | None = None  # None: all for `arch`; an artifact runs the precision it carries
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    device: str = "cpu"  # cpu, cuda or cuda:N (already resolved from `auto`)
    warmup: int = 5
    iters: int | None = None
    duration: float | None = None  # None with `iters` None: DEFAULT_DURATION_S
    rounds: int = 3
    threads: int | None = None
    calib_data: Path | None = None
    calib_samples: int | None = None
    exclude_copies: bool = False
    cache_dir: Path | None = None  # None: bench.cache.default_cache_dir()
    report: Path | None = None  # Markdown report to write
    plot: Path | None = None  # PNG to write
    scenarios: tuple[str, ...] = ()  # MLPerf LoadGen scenarios to run after the per-call timing
    target_qps: float | None = None
    target_latency_ms: float = 15.0
    peak_qps: bool = False
    accuracy: bool = False  # LoadGen's accuracy mode on the labelled images of `data`
    data: Path | None = None
    accuracy_images: int = 1000
    command: str | None = None  # the command line, recorded in the report and the JSON


@dataclass(frozen=True)
class ServedBenchRequest:
    """Models served by a Triton server, timed end to end at each concurrency level, then the LoadGen scenarios."""

    url: str
    models: tuple[str, ...]
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    max_requests: int = 2000
    duration: float | None = None  # None: DEFAULT_DURATION_S per level
    scenarios: tuple[str, ...] = ()
    target_qps: float | None = None
    target_latency_ms: float = 15.0
    peak_qps: bool = False


# --- the option text of the command line -------------------------------------------------------------------------


def parse_choices(text: str | None, allowed: Sequence[str], option: str) -> tuple[str, ...] | None:
    """`a,b` → ('a', 'b') (lower-cased, first occurrence kept); None stays None (the default: all)."""
    if text is None:
        return None
    return check_choices([item.strip().lower() for item in text.split(",") if item.strip()], allowed, option)


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """`8,1,8` → (1, 8): sorted, each once, every one at least 1."""
    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not sizes or any(size < 1 for size in sizes):
        raise UsageError(f"{option} {text!r}: batch sizes must be integers >= 1")
    return tuple(sorted(set(sizes)))


def parse_scenarios(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if not chosen or any(part not in SCENARIO_NAMES for part in chosen):
        raise UsageError(f"--scenario takes {', '.join(SCENARIO_NAMES)} (comma-separated), got {text!r}")
    return chosen


def check_choices(items: Sequence[str], allowed: Sequence[str], option: str) -> tuple[str, ...]:
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UsageError(f"{option}: unknown value(s) {', '.join(unknown) or '(empty)'}; choose from "
                         f"{','.join(allowed)}")
    return tuple(dict.fromkeys(items))


# --- checks before any work ---------------------------------------------------------------------------------------


def check_request(request: BenchRequest) -> None:
    """Every check that needs no model: what to bench, the numbers, the files read and written."""
    from resnet_deploy.paths import check_io

    r = request
    if r.artifacts and r.arch is not None:
        raise UsageError("give artifacts or --depth/--arch, not both")
    if not r.artifacts and r.arch is None:
        raise UsageError("give artifact paths to bench (.safetensors/.pt, .onnx, .xml, .plan/.engine), "
                         "or name a model: --depth N or --arch NAME")
    if r.backends is not None:
        check_choices(r.backends, ALL_BACKENDS, "--backends")
    if r.precisions is not None:
        check_choices(r.precisions, ALL_PRECISIONS, "--precisions")
    if not r.batch_sizes or any(size < 1 for size in r.batch_sizes):
        raise UsageError(f"--batch-sizes {','.join(map(str, r.batch_sizes))!r}: batch sizes must be integers >= 1")
    if r.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {r.rounds}")
    check_timing_numbers(r.warmup, r.iters, r.duration)
    if r.threads is not None and r.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {r.threads}")
    if r.plot is not None and r.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {r.plot}: the plot is a PNG; give a path ending in .png")
    check_io(inputs=r.artifacts, outputs=[("--report", r.report), ("--plot", r.plot)], data=[r.data, r.calib_data])
    _check_accuracy_options(r)
    for path in r.artifacts:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    if r.artifacts and r.calib_data is not None:
        raise UsageError("--calib-data builds INT8 models for --depth/--arch; an INT8 artifact is already calibrated")
    if r.calib_data is not None and not r.calib_data.is_dir():
        raise UsageError(f"--calib-data {r.calib_data}: no such folder")
    if r.calib_samples is not None and r.calib_samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, got {r.calib_samples}")
    if r.scenarios:
        check_choices(r.scenarios, SCENARIO_NAMES, "--scenario")


def check_timing_numbers(warmup: int, iters: int | None, duration: float | None) -> None:
    if iters is not None and duration is not None:
        raise UsageError("give --iters or --duration, not both")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters must be at least 1, got {iters}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration}")


def check_served_request(request: ServedBenchRequest) -> None:
    from resnet_deploy.serving.client import parse_url

    parse_url(request.url)
    if not request.models:
        raise UsageError("--url: name the served models to bench, e.g. resnet20_cifar10")
    if any(level < 1 for level in request.concurrency):
        raise UsageError(f"--concurrency {','.join(map(str, request.concurrency))!r}: levels must be integers >= 1")
    if request.max_requests < 1:
        raise UsageError(f"--max-requests must be at least 1, got {request.max_requests}")
    if request.duration is not None and request.duration <= 0:
        raise UsageError(f"--duration must be positive, got {request.duration}")
    if request.scenarios:
        check_choices(request.scenarios, SCENARIO_NAMES, "--scenario")


def _check_accuracy_options(r: BenchRequest) -> None:
    if r.data is not None and not r.accuracy:
        raise UsageError("--data is the labelled images of --accuracy; add --accuracy (or drop --data)")
    if not r.accuracy:
        return
    if r.data is None:
        raise UsageError("--accuracy needs labelled images: --data DIR")
    if not r.data.is_dir():
        raise UsageError(f"--data {r.data}: no such folder")
    if not r.artifacts:
        raise UsageError("--accuracy measures trained artifacts; give their paths instead of --depth/--arch "
                         "(random weights have no accuracy to keep)")
    if r.accuracy_images < 1:
        raise UsageError(f"--accuracy-images must be at least 1, got {r.accuracy_images}")
