"""What a bench run measures, and the artifacts it needs.

`plan_for_arch` (`--depth/--arch`) builds the FP32/FP16/INT8 ONNX models (and TensorRT plans on a GPU)
into a cache folder keyed by architecture, opset and precision, and keeps the PyTorch model in memory;
`plan_for_artifacts` benches files the user gives. Both return a `BenchPlan`: cases to run (each opens
its engine lazily, so an artifact is only built when a case needs it) and the combinations that cannot
run here, each with its reason. `run_plan` times every case at every batch size, interleaved.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Engine
from resnet_deploy.bench.cache import ArtifactCache, Progress
from resnet_deploy.bench.timing import BenchReport, Skipped, TimingConfig, add_speedups, flag_results
from resnet_deploy.errors import UsageError

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
EXTRAS = {"openvino": "pip install 'resnet-deploy[openvino]'", "tensorrt": "pip install 'resnet-deploy[tensorrt]'"}


@dataclass
class BenchCase:
    """One backend/precision to time at every batch size; `open()` builds what it needs and opens the engine."""

    model: str
    backend: str
    precision: str
    open: Callable[[], Engine] = field(repr=False)
    artifact: str | None = None
    batch_sizes: tuple[int, ...] | None = None  # None: every batch size of the run
    static_batch: int | None = None  # a graph with a fixed batch runs that batch only, whatever was asked
    # An artifact timed as built, at the precision its runtime computes (an FP16 OpenVINO IR on a CPU: f32 or
    # bf16): the row takes the engine's precision instead of being skipped for not running `precision`.
    as_computed: bool = False

    def sizes(self, requested: Sequence[int]) -> list[int]:
        if self.static_batch is not None:
            return [self.static_batch]
        return [b for b in requested if self.batch_sizes is None or b in self.batch_sizes]


@dataclass
class BenchPlan:
    cases: list[BenchCase]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)


# --- what runs where -------------------------------------------------------------------------------------------


def backend_installed(backend: str) -> bool:
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}[backend]
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: imports of it are blocked
        return False


def backend_usable(backend: str, device: str) -> tuple[bool, str]:
    """Whether `backend` can run on `device` here (the targets decide); the reason names what to install or change."""
    if backend == "torch":
        return True, ""
    from resnet_deploy.targets.base import target_usable

    return target_usable(backend, device)


def precision_unsupported(backend: str, precision: str, device: str) -> str | None:
    """Why a backend never runs a precision in this tool (None: it does)."""
    cpu = not device.startswith("cuda")
    if backend == "torch":
        if precision == "int8":
            return "PyTorch eager has no INT8 path here; INT8 runs from the Q/DQ ONNX (onnxruntime, openvino, tensorrt)"
        if precision == "fp16" and cpu:
            return "PyTorch FP16 on the CPU is emulated and slow; use bf16, or fp16 with --device cuda"
    if backend in ("onnxruntime", "tensorrt") and precision == "bf16":
        return "no bf16 ONNX model is produced; bf16 runs on torch and openvino (use fp16 here)"
    if backend == "openvino" and precision == "fp16":
        return "OpenVINO on a CPU computes an FP16 model in f32 or bf16; ask for bf16 (its fast reduced precision)"
    return None


def check_requested_backends(backends: Sequence[str], explicit: bool) -> None:
    """A backend named explicitly with `--backends` whose package is missing is an error naming the extra."""
    if not explicit:
        return
    for backend in backends:
        if backend in EXTRAS and not backend_installed(backend):
            raise UsageError(f"--backends {backend}: {backend} is not installed; {EXTRAS[backend]}")


# --- artifacts built for --depth/--arch (bench/cache.py builds them) ---------------------------------------------


def _torch_opener(model: Any, card: Any, precision: str, device: str, threads: int | None) -> Callable[[], Engine]:
    def open_torch() -> Engine:
        from engines.torch_engine import TorchEngine

        size = card.preprocessing.input_size
        # The engine casts and moves its module in place: give each precision its own copy.
        return TorchEngine(copy.deepcopy(model), input_shape=(3, size, size), num_classes=card.num_classes,
                           precision=precision, device=device, threads=threads)

    return open_torch


def plan_for_arch(
    arch: str,
    *,
    backends: Sequence[str],
    precisions: Sequence[str],
    batch_sizes: Sequence[int],
    device: str,
    threads: int | None,
    include_copies: bool,
    cache_dir: Path,
    calib_data: Path | None = None,
    calib_samples: int | None = None,
    progress: Progress | None = None,
) -> BenchPlan:
    from resnet_deploy.checkpoints import random_model

    loaded = random_model(arch)
    cache = ArtifactCache(cache_dir, loaded, calib_data=calib_data, calib_samples=calib_samples, progress=progress)
    model, card = loaded.model, loaded.card
    label = card.arch
    cases: list[BenchCase] = []
    skipped: list[Skipped] = []
    notes = [f"{label}: random weights (seed {card.lineage.get('seed', 0)}); latency does not depend on weight "
             f"values. Built artifacts are cached in {cache.folder}."]
    for backend in backends:
        usable, reason = backend_usable(backend, device)
        for precision in precisions:
            why = reason if not usable else precision_unsupported(backend, precision, device)
            if why:
                skipped.append(Skipped(label, backend, precision, why))
                continue
            if backend == "tensorrt":  # like trtexec: one plan per batch size, its profile tuned for it
                cases += [_tensorrt_case(cache, card.arch, precision, batch, device=device,
                                         include_copies=include_copies) for batch in batch_sizes]
                continue
            cases.append(_arch_case(cache, model, card, backend, precision, device=device, threads=threads))
    if any(c.precision == "int8" for c in cases):
        if calib_data is None:
            notes.append("INT8 models are calibrated on random images: fine for latency, meaningless for accuracy "
                         "(give --calib-data DIR to calibrate on real images).")
        else:
            notes.append(f"INT8 models are calibrated on images from {calib_data}.")
    return BenchPlan(cases, skipped, notes)


def _arch_case(cache: ArtifactCache, model: Any, card: Any, backend: str, precision: str, *, device: str,
               threads: int | None) -> BenchCase:
    label = card.arch
    if backend == "torch":
        return BenchCase(label, backend, precision, _torch_opener(model, card, precision, device, threads),
                         artifact="(in memory)")
    if backend == "onnxruntime":
        def open_ort() -> Engine:
            from engines.onnxruntime_engine import OnnxRuntimeEngine

            # The CPU INT8 artifact is the one build-engine ships for ONNX Runtime (uint8 activations).
            cpu_int8 = precision == "int8" and device == "cpu"
            path = cache.onnxruntime_int8_cpu() if cpu_int8 else cache.onnx_for(precision)
            return OnnxRuntimeEngine(path, device=device, threads=threads)

        return BenchCase(label, backend, precision, open_ort, artifact=f"{cache.folder}/")
    if backend == "openvino":
        def open_openvino() -> Engine:
            from engines.openvino_engine import OpenVINOEngine

            # fp32/bf16: the FP32 ONNX with that inference precision; int8: the Q/DQ ONNX.
            source = cache.int8_onnx() if precision == "int8" else cache.fp32_onnx()
            hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
            return OpenVINOEngine(source, device="cpu", performance_hint="LATENCY", inference_precision=hint,
                                  threads=threads)

        return BenchCase(label, backend, precision, open_openvino, artifact=f"{cache.folder}/")

    raise ValueError(f"no engine for backend {backend!r}")


def _tensorrt_case(cache: ArtifactCache, label: str, precision: str, batch: int, *, device: str,
                   include_copies: bool) -> BenchCase:
    def open_tensorrt() -> Engine:
        from resnet_deploy.artifacts import open_engine

        return open_engine(cache.tensorrt_plan(precision, batch), device=device, include_copies=include_copies)

    return BenchCase(label, "tensorrt", precision, open_tensorrt, artifact=f"{cache.folder}/", batch_sizes=(batch,))


# --- artifacts given on the command line ------------------------------------------------------------------------


def plan_for_artifacts(
    paths: Sequence[Path],
    *,
    backends: Sequence[str] | None,
    precisions: Sequence[str] | None,
    device: str,
    threads: int | None,
    include_copies: bool,
) -> BenchPlan:
    """Each artifact on the backend(s) that open it; a PyTorch FP32 baseline per architecture from its card
    (random weights) unless a PyTorch artifact of it is given or `--backends` leaves torch out. An ONNX model
    without a card runs as its graph says (no baseline: there is no PyTorch twin to build)."""
    from resnet_deploy.artifacts import Artifact, open_engine

    cases: list[BenchCase] = []
    skipped: list[Skipped] = []
    notes: list[str] = []
    cards: dict[str, Any] = {}
    torch_given: set[str] = set()
    wanted_backends = list(backends) if backends else None
    for path in paths:
        artifact = Artifact(path)  # raises UsageError for an unknown suffix
        native = artifact.backend
        label, card, static = _label_and_card(artifact, notes)  # raises UsageError for a missing file or bad graph
        cards.setdefault(label, card)
        runners = [native]
        ort_only = _runtime_artifact(artifact)
        if native == "onnxruntime" and wanted_backends and "openvino" in wanted_backends:
            if ort_only:  # what OpenVINO cannot compile is skipped with its reason, not a failed run
                skipped.append(Skipped(label, "openvino", artifact.precision, f"{path.name} is {ort_only}: "
                                       "give OpenVINO the ONNX model it was built from, or its IR"))
            else:
                runners.append("openvino")  # OpenVINO reads ONNX directly
        if wanted_backends:
            runners = [b for b in runners if b in wanted_backends]
            if not runners:
                raise UsageError(f"{path}: none of --backends {','.join(wanted_backends)} can run a {path.suffix} "
                                 f"artifact (it runs on {native})")
        graph = artifact.precision
        for backend in runners:
            usable, reason = backend_usable(backend, device)
            for precision in _artifact_precisions(backend, graph, precisions):
                why = reason if not usable else precision_unsupported(backend, precision, device)
                # What build-engine makes, bench runs: an FP16 IR (`build-engine --fp16`, OpenVINO by default on
                # a CPU) is timed at the precision OpenVINO computes it in here, and the row says which.
                as_computed = usable and backend == "openvino" and precision == "fp16"
                if as_computed:
                    why = None
                    notes.append(f"{path.name}: an FP16 model; OpenVINO on a CPU computes it in f32 or bf16 (not "
                                 "f16), so it is timed as built and its row shows the precision it computes")
                if why:
                    skipped.append(Skipped(label, backend, precision, why))
                    continue
                if backend == "torch" and precision == "fp32":
                    torch_given.add(label)
                # OpenVINO on an FP32 model: the precision asked for is its inference precision.
                hint = {"fp32": "f32", "bf16": "bf16"}.get(precision) if graph == "fp32" else None
                cases.append(BenchCase(label, backend, precision, _artifact_opener(
                    open_engine, path, backend, precision, hint, device, threads, include_copies), artifact=str(path),
                    static_batch=static, as_computed=as_computed))
    if wanted_backends is None or "torch" in wanted_backends:
        for label, card in cards.items():
            if label in torch_given:
                continue
            why = _no_baseline(card)
            if why:
                skipped.append(Skipped(label, "torch", "fp32", why))
                continue
            model = card.build_model()
            cases.insert(0, BenchCase(label, "torch", "fp32", _torch_opener(model, card, "fp32", device, threads),
                                      artifact="(baseline from the card)"))
            notes.append(f"{label}: the PyTorch FP32 baseline is built from the artifact's card with random weights "
                         "(latency does not depend on weight values).")
    return BenchPlan(cases, skipped, notes)


def _runtime_artifact(artifact: Any) -> str | None:
    """Why an ONNX file runs on ONNX Runtime only (an ONNX Runtime target's artifact: optimized offline for
    its CPU kernels, activations rewritten to uint8), or None for a plain ONNX model."""
    from resnet_deploy.artifacts import ARTIFACT_KEY

    kind = artifact.metadata.get(ARTIFACT_KEY) if artifact.backend == "onnxruntime" else None
    return f"an ONNX Runtime artifact ({kind}, optimized for ONNX Runtime's kernels)" if kind else None


def _label_and_card(artifact: Any, notes: list[str]) -> tuple[str, Any, int | None]:
    """(label, card or None, the one batch size a static-batch graph runs) of an artifact. An ONNX model
    without a card is read as an image classifier (input shape and dtype from its graph)."""
    from resnet_deploy.artifacts import CARD_KEY

    artifact.require_file()
    if artifact.backend != "onnxruntime":
        return artifact.card.arch, artifact.card, None
    from resnet_deploy.classifier_onnx import classifier_io, load_onnx

    io = classifier_io(load_onnx(artifact.path), artifact.path)  # a graph that is no image classifier is refused
    if io.batch is not None and io.height is not None and io.width is not None:
        from resnet_deploy.bench.timing import require_memory_for

        # refused before any engine opens: nothing that size is ever allocated
        require_memory_for((io.batch, 3, io.height, io.width), "its static input", f"{artifact.path}: ")
    if io.batch is not None:
        notes.append(f"{artifact.path.name}: the graph's batch is fixed at {io.batch}; it is benchmarked at batch "
                     f"{io.batch} only, whatever --batch-sizes asks")
    if artifact.metadata.get(CARD_KEY):
        return artifact.card.arch, artifact.card, io.batch
    if io.input_size is None:
        raise UsageError(f"{artifact.path}: no model card and a dynamic input height/width; give the size with "
                         "`resnet-deploy import-onnx --input-size N` first")
    notes.append(f"{artifact.path.name}: no model card; input {io.input_name} [{io.batch or 'N'}, 3, {io.height}, "
                 f"{io.width}] float32 read from the graph")
    return artifact.path.name.split(".")[0], None, io.batch


def _no_baseline(card: Any) -> str | None:
    """Why there is no PyTorch FP32 baseline for `card` (None: one is built from it)."""
    if card is None:
        return "no model card: a card-less ONNX has no PyTorch twin to build a baseline from"
    from resnet_deploy.classifier_card import is_foreign_card

    if is_foreign_card(card):
        return (f"{card.arch} was imported from a foreign ONNX (import-onnx): there is no PyTorch twin to build a "
                "baseline from; speed-ups are not computed")
    return None


def _artifact_precisions(backend: str, graph: str, precisions: Sequence[str] | None) -> list[str]:
    """PyTorch runs the precisions asked for (fp32 by default); OpenVINO picks its inference precision for an
    FP32 model; everything else runs the precision its graph carries."""
    if backend == "torch":
        return list(precisions) if precisions else ["fp32"]
    if backend == "openvino" and graph == "fp32":
        return [p for p in (precisions or ["fp32"]) if p in ("fp32", "bf16")] or ["fp32"]
    return [graph]


def _artifact_opener(open_engine: Callable[..., Engine], path: Path, backend: str, precision: str, hint: str | None,
                     device: str, threads: int | None, include_copies: bool) -> Callable[[], Engine]:
    def open_artifact() -> Engine:
        if backend == "openvino":
            from engines.openvino_engine import OpenVINOEngine

            return OpenVINOEngine(path, device="cpu", performance_hint="LATENCY", inference_precision=hint,
                                  threads=threads)
        return open_engine(path, device=device, precision=precision if backend == "torch" else None,
                           threads=threads, include_copies=include_copies)

    return open_artifact


def plan_for_architecture_or_artifacts(arch: str | None, artifacts: Sequence[Path], *, backends: Sequence[str] | None,
                                       precisions: Sequence[str] | None, batch_sizes: Sequence[int], device: str,
                                       threads: int | None, include_copies: bool, cache_dir: Path,
                                       calib_data: Path | None = None, calib_samples: int | None = None,
                                       progress: Progress | None = None) -> BenchPlan:
    """`bench ARTIFACT...` or `bench --depth/--arch`: every backend and precision unless narrowed."""
    if artifacts:
        return plan_for_artifacts(artifacts, backends=backends, precisions=precisions, device=device,
                                  threads=threads, include_copies=include_copies)
    if arch is None:
        raise UsageError("name a model: artifacts, --depth N or --arch NAME")
    return plan_for_arch(arch, backends=backends or BACKENDS, precisions=precisions or PRECISIONS,
                         batch_sizes=batch_sizes, device=device, threads=threads, include_copies=include_copies,
                         cache_dir=cache_dir, calib_data=calib_data, calib_samples=calib_samples, progress=progress)


# --- running ------------------------------------------------------------------------------------------------------


def run_plan(
    plan: BenchPlan,
    *,
    batch_sizes: Sequence[int],
    timing: TimingConfig,
    include_copies: bool,
    environment: dict[str, Any],
    progress: Progress | None = None,
    on_step: Callable[[], None] | None = None,
) -> BenchReport:
    """Time every case at every batch size in interleaved rounds (`bench/rounds.py`); a case that cannot open
    or run a batch size becomes a skipped row. `progress` gets a line before each step, `on_step` is called
    once per case/batch size and round (`total_steps`). Ctrl-C keeps the rows measured so far
    (`BenchReport.interrupted`)."""
    from resnet_deploy.bench.rounds import run_rounds

    outcome = run_rounds(plan.cases, batch_sizes, timing, include_copies=include_copies,
                         say=progress or (lambda message: None), step=on_step or (lambda: None))
    flag_results(outcome.results)
    add_speedups(outcome.results)
    return BenchReport(environment=environment, results=outcome.results, skipped=[*plan.skipped, *outcome.skipped],
                       timing=timing, notes=list(plan.notes), interrupted=outcome.interrupted,
                       planned_rows=sum(len(case.sizes(batch_sizes)) for case in plan.cases))


def total_steps(plan: BenchPlan, batch_sizes: Sequence[int], timing: TimingConfig | None = None) -> int:
    rounds = timing.effective_rounds if timing is not None else 1
    return rounds * sum(len(case.sizes(batch_sizes)) for case in plan.cases)
