"""What a bench run measures, and the artifacts it needs.

`plan_for_arch` (`--depth/--arch`) builds the FP32/FP16/INT8 ONNX models (and TensorRT plans on a GPU)
into a cache folder keyed by architecture, opset and precision, and keeps the PyTorch model in memory;
`plan_for_artifacts` benches files the user gives. Both return a `BenchPlan`: cases to run (each opens
its engine lazily, so an artifact is only built when a case needs it) and the combinations that cannot
run here, each with its reason. `run_plan` times every case at every batch size, interleaved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Engine
from resnet_deploy import registry
from resnet_deploy.bench.cache import ArtifactCache, Progress
from resnet_deploy.bench.timing import BenchReport, Skipped, TimingConfig, add_speedups, flag_results
from resnet_deploy.errors import UsageError

# Read from the declarations (registry/): every backend and precision, and the extra that installs each backend.
BACKENDS = registry.backend_names()
PRECISIONS = registry.precision_names()
EXTRAS = {b.name: b.install_hint for b in registry.backends() if b.extra}


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
    return registry.backend(backend).installed()


def backend_usable(backend: str, device: str) -> tuple[bool, str]:
    """Whether `backend` can run on `device` here (the targets decide); the reason names what to install or change."""
    if registry.backend(backend).target is None:  # nothing to build: its engine runs in this process (PyTorch)
        return True, ""
    from resnet_deploy.targets.base import target_usable

    return target_usable(backend, device)


def precision_unsupported(backend: str, precision: str, device: str) -> str | None:
    """Why a backend never runs a precision in this tool (None: it does): its declaration says."""
    return registry.backend(backend).why_not(precision, device)


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
        engine_class = registry.backend("torch").engine_class()  # an in-memory module, not an artifact

        size = card.preprocessing.input_size
        # The engine casts and moves its module in place: give each precision its own copy.
        return engine_class(copy.deepcopy(model), input_shape=(3, size, size), num_classes=card.num_classes,
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
            # The CPU INT8 artifact is the one build-engine ships for ONNX Runtime (uint8 activations).
            cpu_int8 = precision == "int8" and device == "cpu"
            path = cache.onnxruntime_int8_cpu() if cpu_int8 else cache.onnx_for(precision)
            return _open(backend, path, registry.OpenOptions(device=device, threads=threads))

        return BenchCase(label, backend, precision, open_ort, artifact=f"{cache.folder}/")
    if backend == "openvino":
        def open_openvino() -> Engine:
            # fp32/bf16: the FP32 ONNX with that inference precision; int8: the Q/DQ ONNX.
            source = cache.int8_onnx() if precision == "int8" else cache.fp32_onnx()
            hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
            return _open(backend, source, registry.OpenOptions(device="cpu", precision=hint, threads=threads))

        return BenchCase(label, backend, precision, open_openvino, artifact=f"{cache.folder}/")
    if registry.backend(backend).target is not None:  # any other declared backend: its target's artifact
        def open_built() -> Engine:
            path = cache.target_artifact(backend, precision, device)
            return _open(backend, path, registry.OpenOptions(device=device, threads=threads))

        return BenchCase(label, backend, precision, open_built, artifact=f"{cache.folder}/")
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
        for reader in _onnx_readers(native, wanted_backends):  # OpenVINO reads ONNX directly
            if ort_only:  # what it cannot compile is skipped with its reason, not a failed run
                spec = registry.backend(reader)
                skipped.append(Skipped(label, reader, artifact.precision, f"{path.name} is {ort_only}: give "
                                       f"{spec.display} the ONNX model it was built from, or its "
                                       f"{spec.default_suffix()} artifact"))
            else:
                runners.append(reader)
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
                as_computed = usable and registry.backend(backend).timed_as_built(precision, device)
                if as_computed:
                    why = None
                    notes.append(f"{path.name}: an FP16 model; OpenVINO on a CPU computes it in f32 or bf16 (not "
                                 "f16), so it is timed as built and its row shows the precision it computes")
                if why:
                    skipped.append(Skipped(label, backend, precision, why))
                    continue
                if backend == "torch" and precision == "fp32":
                    torch_given.add(label)
                cases.append(BenchCase(label, backend, precision, _artifact_opener(
                    open_engine, path, backend, precision, graph, device, threads, include_copies), artifact=str(path),
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


def _onnx_readers(native: str, wanted: Sequence[str] | None) -> list[str]:
    """The other backends asked for that also run a plain ONNX model (`Backend.reads_onnx`)."""
    if not wanted or registry.backend_for_suffix(".onnx") is not registry.backend(native):
        return []
    return [b.name for b in registry.backends() if b.reads_onnx and b.name != native and b.name in wanted]


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
    from resnet_deploy.foreign.graph import classifier_io, load_onnx

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
    from resnet_deploy.foreign.card import is_foreign_card

    if is_foreign_card(card):
        return (f"{card.arch} was imported from a foreign ONNX (import-onnx): there is no PyTorch twin to build a "
                "baseline from; speed-ups are not computed")
    return None


def _artifact_precisions(backend: str, graph: str, precisions: Sequence[str] | None) -> list[str]:
    """An engine that chooses its precision when it opens (`Backend.runtime_precisions`: PyTorch's dtype, OpenVINO's
    inference precision) runs an FP32 model at those asked for (PyTorch, the baseline: every one asked, the skips
    say why); everything else runs the precision its graph carries."""
    spec = registry.backend(backend)
    if graph != "fp32" or not spec.runtime_precisions:
        return [graph]
    asked = list(precisions) if precisions else ["fp32"]
    if spec.target is None:
        return asked
    return [p for p in asked if p in spec.runtime_precisions] or ["fp32"]


def _artifact_opener(open_engine: Callable[..., Engine], path: Path, backend: str, precision: str, graph: str,
                     device: str, threads: int | None, include_copies: bool) -> Callable[[], Engine]:
    def open_artifact() -> Engine:
        # On an FP32 graph the precision asked for is the engine's choice (PyTorch's dtype, OpenVINO's inference
        # precision); any other graph runs the precision it carries.
        return open_engine(path, backend=backend, device=device, precision=precision if graph == "fp32" else None,
                           threads=threads, include_copies=include_copies)

    return open_artifact


def _open(backend: str, path: Path, options: registry.OpenOptions) -> Engine:
    """A cached model this run built itself: opened as it is (no file or self-check: it was just made here)."""
    return registry.open_with(registry.backend(backend), path, options)


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
