"""Export a loaded model to ONNX and prove the file computes what PyTorch computes.

The export is declarative (optimum's pattern): an `ExportSpec` names the I/O tensors, the dynamic
axes, the opset and the tolerance. torch's ONNX exporter (`dynamo=True, optimize=True`) does the
graph work: its onnxscript optimizer folds constants, fuses every BatchNormalization into the
preceding convolution and drops dead nodes, so nothing here rewrites graphs by hand; we only check
the result (no BatchNormalization left, `onnx.checker` full check).

Verification is never skipped by default: ONNX Runtime runs the file at batch 1 and at a batch > 1
on random inputs (and on real images when given) and the logits are compared with PyTorch's.

Tolerance. For real weights the gate is absolute: max |ORT - PyTorch| <= tolerance. Randomly
initialized deep residual nets have no trained BatchNorm statistics, so their logits grow with
depth (about 1e8 for a random resnet110) and float32 rounding alone exceeds any absolute bound;
for random weights the bound is therefore tolerance * max(1, max |reference logit|). A top-1
flip counts as a disagreement unless the reference's top-1/top-2 margin is within that bound
(a numerical tie).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
from resnet_deploy.checkpoints import LoadedModel
from resnet_deploy.compare import LogitComparison, compare_logits
from resnet_deploy.errors import CheckFailed, UsageError, first_line
from resnet_deploy.metadata_keys import PRECISION_KEY
from resnet_deploy.samples import batches_of, random_images

DEFAULT_OPSET = 20  # torch 2.14's exporter default; ONNX Runtime 1.31 and TensorRT 10 parse it
MIN_OPSET = 18  # the torch exporter's own operator library targets opset 18
DEFAULT_TOLERANCE = 1e-4  # FP32 vs FP32: only summation order differs
VERIFY_BATCH = 4  # the "batch > 1" of a dynamic-batch verification


@dataclass(frozen=True)
class ExportSpec:
    """What the ONNX file looks like: names, shapes, dynamic axes, opset, tolerance."""

    input_size: int
    channels: int = 3
    batch: int | None = None  # None: dynamic batch axis
    opset: int = DEFAULT_OPSET
    tolerance: float = DEFAULT_TOLERANCE
    input_name: str = "input"
    output_name: str = "logits"
    batch_axis_name: str = "batch"

    @property
    def dynamic(self) -> bool:
        return self.batch is None

    @property
    def example_batch(self) -> int:
        # torch.export specializes a dimension traced at size 1, so trace a dynamic batch at 2.
        return 2 if self.batch is None else self.batch

    @property
    def verify_batch_sizes(self) -> tuple[int, ...]:
        # A static-batch model accepts only its own batch size.
        return (1, VERIFY_BATCH) if self.batch is None else (self.batch,)

    def input_shape(self) -> tuple[int | None, ...]:
        return (self.batch, self.channels, self.input_size, self.input_size)


@dataclass
class Comparison:
    """ORT vs PyTorch on one set of inputs at one batch size (the numbers are `compare.LogitComparison`'s)."""

    inputs: str  # "random" or "images"
    batch_size: int
    logits: LogitComparison

    samples = property(lambda self: self.logits.images)
    max_abs_diff = property(lambda self: self.logits.max_abs_logit_diff)
    mean_abs_diff = property(lambda self: self.logits.mean_abs_logit_diff)
    logit_scale = property(lambda self: self.logits.logit_scale)  # max |reference logit|
    allowed = property(lambda self: self.logits.allowed)  # the bound max_abs_diff was held to
    agreement = property(lambda self: self.logits.agreement)  # top-1 agreement, percent
    disagreements = property(lambda self: self.logits.disagreements)  # top-1 flips that are not numerical ties
    non_finite = property(lambda self: self.logits.non_finite)  # inf/NaN logits in either output (never a pass)
    passed = property(lambda self: bool(self.logits.passed))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "batch_size": self.batch_size, "samples": self.samples,
                "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "logit_scale": self.logit_scale, "allowed": self.allowed, "agreement": self.agreement,
                "disagreements": self.disagreements, "non_finite": self.non_finite, "passed": self.passed,
                "comparison": self.logits.to_dict()}


@dataclass
class Verification:
    tolerance: float
    mode: str  # "absolute" or "relative" (to the logit scale, random weights)
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.comparisons), default=0.0)

    @property
    def max_abs_diff_by_batch(self) -> dict[int, float]:
        by_batch: dict[int, float] = {}
        for c in self.comparisons:
            by_batch[c.batch_size] = max(by_batch.get(c.batch_size, 0.0), c.max_abs_diff)
        return by_batch

    @property
    def agreement(self) -> float:
        total = sum(c.samples for c in self.comparisons)
        return sum(c.agreement * c.samples for c in self.comparisons) / total if total else 100.0

    @property
    def needed_tolerance(self) -> float:
        """The smallest tolerance that would have passed (Polygraphy reports this, not only pass/fail)."""
        return max((c.logits.needed_tolerance for c in self.comparisons), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "mode": self.mode,
            "max_abs_logit_diff": self.max_abs_diff,
            "max_abs_logit_diff_by_batch": {str(k): v for k, v in self.max_abs_diff_by_batch.items()},
            "needed_tolerance": self.needed_tolerance,
            "agreement": self.agreement,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    def failure_message(self) -> str:
        failed = [c for c in self.comparisons if not c.passed]
        if any(c.non_finite for c in failed):
            return ("the logits are not finite (inf/NaN), so nothing can be compared; with random weights a very "
                    "deep net overflows float32: export real weights, or pass --no-verify for latency work")
        parts = [
            f"{c.inputs} batch {c.batch_size}: max |diff| {c.max_abs_diff:.3g} (allowed {c.allowed:.3g}), "
            f"{c.disagreements} top-1 disagreement(s)"
            for c in failed
        ]
        return ("ONNX Runtime disagrees with PyTorch: " + "; ".join(parts)
                + ". Pass --tolerance to accept a larger difference if this is expected")


@dataclass
class ExportResult:
    path: Path
    arch: str
    opset: int
    batch: int | None  # None: dynamic
    spec: ExportSpec
    input_shape: list[int | str]
    output_shape: list[int | str]
    node_counts: dict[str, int]
    size_bytes: int
    sha256: str
    random_weights: bool
    source: str
    verification: Verification | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "arch": self.arch,
            "opset": self.opset,
            "batch": "dynamic" if self.batch is None else self.batch,
            "input": {"name": self.spec.input_name, "shape": self.input_shape, "dtype": "float32"},
            "output": {"name": self.spec.output_name, "shape": self.output_shape, "dtype": "float32"},
            "node_counts": self.node_counts,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "random_weights": self.random_weights,
            "source": self.source,
            "verified": self.verification is not None,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def default_output_path(arch: str) -> Path:
    """`resnet50` → `resnet50.onnx` in the current folder."""
    return Path(f"{arch}.onnx")


def is_random(loaded: LoadedModel) -> bool:
    return loaded.kind == "random" or bool(loaded.card.lineage.get("random_weights"))


def export_onnx(
    loaded: LoadedModel,
    output: str | Path,
    *,
    opset: int | None = None,
    batch: int | None = None,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    real_images: np.ndarray | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export `loaded` to `output` (written atomically), verified against PyTorch unless `verify=False`.

    `real_images`: preprocessed float32 NCHW images compared in addition to random inputs.
    Raises CheckFailed (and leaves `output` untouched) when verification fails.
    """
    import onnx

    spec = _make_spec(loaded.card, opset=opset, batch=batch, tolerance=tolerance)
    if real_images is not None:
        _check_images(real_images, spec)
    model = to_onnx_proto(loaded.model, spec)
    add_metadata(model, loaded, spec)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"the exported graph fails onnx.checker: {first_line(exc)}") from None

    target = Path(output)
    verification = None
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
        if verify:
            verification = verify_onnx(tmp, loaded.model, spec, relative=is_random(loaded),
                                       real_images=real_images, seed=seed)
            if not verification.passed:
                kept = " (the file already there was left unchanged)" if target.exists() else ""
                raise CheckFailed(
                    f"{target}: verification against PyTorch failed (tolerance {spec.tolerance:g}, "
                    f"{verification.mode}); nothing was written{kept}: {verification.failure_message()}"
                )
    return ExportResult(
        path=target,
        arch=loaded.card.arch,
        opset=spec.opset,
        batch=spec.batch,
        spec=spec,
        input_shape=_shape_of(model.graph.input[0]),
        output_shape=_shape_of(model.graph.output[0]),
        node_counts=dict(Counter(node.op_type for node in model.graph.node)),
        size_bytes=target.stat().st_size,
        sha256=sha256_file(target),
        random_weights=is_random(loaded),
        source=str(loaded.source),
        verification=verification,
    )


def _make_spec(card: ModelCard, *, opset: int | None, batch: int | None, tolerance: float) -> ExportSpec:
    import onnx

    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"opset {opset} is not supported: choose {MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
    if batch is not None and batch < 1:
        raise UsageError(f"batch must be a positive number or dynamic, got {batch}")
    if not tolerance > 0:
        raise UsageError(f"tolerance must be positive, got {tolerance}")
    return ExportSpec(input_size=card.preprocessing.input_size, batch=batch, opset=opset, tolerance=tolerance)


def to_onnx_proto(module: Any, spec: ExportSpec) -> Any:
    """Run torch's exporter with its optimizer; return the ModelProto with BatchNorm folded."""
    import torch

    module = module.eval().float().cpu()
    example = torch.zeros(spec.example_batch, spec.channels, spec.input_size, spec.input_size)
    # Positional form: independent of the name of the module's forward argument.
    dynamic_shapes = ({0: torch.export.Dim(spec.batch_axis_name)},) if spec.dynamic else None
    # The exporter may print progress and warn about deprecated internals: keep stdout for results.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                optimize=True,  # constant folding, Conv+BatchNorm fusion, dead-node removal
                opset_version=spec.opset,
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; the user needs one line
            raise CheckFailed(f"torch.onnx.export failed: {first_line(exc)}") from None
    model = program.model_proto
    remaining = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    if remaining:
        raise CheckFailed(f"{remaining} BatchNormalization node(s) were not folded into a convolution")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([spec.input_name], [spec.output_name]):
        raise CheckFailed(f"exported I/O names are {names}, expected {spec.input_name!r} → {spec.output_name!r}")
    return model


def onnx_metadata_for(loaded: LoadedModel, spec: ExportSpec) -> dict[str, str]:
    """The card JSON plus flat human-readable keys (see the shared ONNX metadata contract)."""
    import onnx
    import torch

    card = loaded.card
    card = dataclasses.replace(card, lineage={
        **card.lineage,
        "onnx_export": {"opset": spec.opset, "torch": torch.__version__, "onnx": onnx.__version__},
    })
    return {
        **card_metadata_props(card, source_sha256=loaded.source_sha256, batch=spec.batch),
        "random_weights": "true" if is_random(loaded) else "false",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }


def card_metadata_props(card: ModelCard, *, source_sha256: str | None, batch: int | None) -> dict[str, str]:
    """An FP32 ONNX model's card metadata: the card JSON plus flat human-readable keys (export and import-onnx)."""
    pre = card.preprocessing
    return {
        CARD_METADATA_KEY: card.to_json(),
        "arch": card.arch,
        "num_classes": str(card.num_classes),
        "class_names": json.dumps(card.class_names),
        "input_size": str(pre.input_size),
        "resize_size": "none" if pre.resize_size is None else str(pre.resize_size),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "interpolation": pre.interpolation,
        "dataset": card.dataset or "",
        "source_sha256": source_sha256 or str(card.lineage.get("source_sha256", "")),
        "batch": "dynamic" if batch is None else str(batch),
        PRECISION_KEY: "fp32",
    }


def add_metadata(model: Any, loaded: LoadedModel, spec: ExportSpec) -> None:
    from resnet_deploy import __version__

    props = onnx_metadata_for(loaded, spec)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "resnet-deploy", __version__
    model.doc_string = f"{loaded.card.arch} exported by resnet-deploy from {loaded.source.name}"


def verify_onnx(
    onnx_path: str | Path,
    reference: Any,
    spec: ExportSpec,
    *,
    relative: bool = False,
    real_images: np.ndarray | None = None,
    seed: int = 0,
) -> Verification:
    """Run the ONNX file in ONNX Runtime and the PyTorch `reference` on the same inputs; compare logits."""
    from engines.onnxruntime_engine import OnnxRuntimeEngine
    from engines.torch_engine import TorchEngine

    rng = np.random.default_rng(seed)
    shape = (spec.channels, spec.input_size, spec.input_size)
    verification = Verification(tolerance=spec.tolerance, mode="relative" if relative else "absolute")
    with OnnxRuntimeEngine(onnx_path) as ort_engine:
        num_classes = int(ort_engine.output.shape[-1] or 0)
        with TorchEngine(reference, input_shape=shape, num_classes=num_classes) as torch_engine:
            for size in spec.verify_batch_sizes:
                batch = random_images((size, *shape), seed=rng)
                verification.comparisons.append(
                    _compare(torch_engine.infer(batch), ort_engine.infer(batch), "random", size,
                             spec.tolerance, relative))
            if real_images is not None and len(real_images):
                size = spec.batch or len(real_images)
                reference_logits, onnx_logits = [], []
                real = real_images.astype(np.float32, copy=False)
                for chunk in batches_of(real, size, static=spec.batch is not None):
                    reference_logits.append(torch_engine.infer(chunk))
                    onnx_logits.append(ort_engine.infer(chunk))
                n = len(real_images)
                verification.comparisons.append(_compare(
                    np.concatenate(reference_logits)[:n], np.concatenate(onnx_logits)[:n], "images", size,
                    spec.tolerance, relative))
    return verification


def _compare(reference: np.ndarray, candidate: np.ndarray, inputs: str, batch_size: int, tolerance: float,
             relative: bool) -> Comparison:
    return Comparison(inputs, batch_size, compare_logits(reference, candidate, tolerance=tolerance, relative=relative))


def _check_images(images: np.ndarray, spec: ExportSpec) -> None:
    want = (spec.channels, spec.input_size, spec.input_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise UsageError(f"real images must be preprocessed NCHW arrays of shape (N, {', '.join(map(str, want))}), "
                         f"got {tuple(images.shape)}")


def _shape_of(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]
