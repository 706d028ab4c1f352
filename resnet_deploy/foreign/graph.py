"""Any image-classifier ONNX, from any exporter: read its I/O and clean its graph.

An image classifier here is a graph with one NCHW float32 input (any name, static or dynamic batch)
and one output of class scores [N, C] (any name). `classifier_io` reads that contract from the graph
and refuses anything else with one line naming the problem.

Foreign graphs carry what our own export never leaves: BatchNormalization, Identity, unfolded
constants (`Shape → Expand → CastLike` chains), an opset below what FP16/INT8 need. `clean_graph`
removes them with the tools already in the dependencies: the onnx version converter raises the
opset, then onnxslim (constant folding, Identity and dead-node removal, Conv+BatchNorm fusion) and
ONNX Runtime's offline optimizer at its basic, provider-independent level (turns CastLike into Cast,
fuses Conv+BatchNorm) run in turns until the graph stops changing. The cleaned graph is run against
the original on ONNX Runtime and refused if its logits moved; what changed comes back as lines.

The model card such a graph gets (`import-onnx`, or the preprocessing flags of build-engine, validate and
bench) is `foreign/card.py`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.atomic import atomic_path
from resnet_deploy.card import ModelCard
from resnet_deploy.errors import CheckFailed, UsageError, first_line
from resnet_deploy.onnx_check import session
from resnet_deploy.samples import random_images

MIN_OPSET = 19  # FP16 Q/DQ scales need opset 19 (precision/common.py)
TARGET_OPSET = 20  # what `resnet-deploy export` writes; raised to when below MIN_OPSET
MAX_CLEAN_ROUNDS = 4  # onnxslim + ORT passes until nothing changes (two suffice for torch's exporters)
VERIFY_TOLERANCE = 1e-4  # relative to max(1, |logit|): cleaning only reorders float32 arithmetic
# Why an op type disappears when cleaned (default: folded into constants or fused).
_REASONS = {"BatchNormalization": "folded into the preceding convolutions", "Identity": "removed",
            "Dropout": "removed (inference)", "Constant": "folded into initializers"}


@dataclass(frozen=True)
class ClassifierIO:
    """The image-classifier contract read from a graph."""

    input_name: str
    output_name: str
    batch: int | None  # None: dynamic batch
    channels: int
    height: int | None  # None: dynamic
    width: int | None
    num_classes: int
    opset: int

    @property
    def input_size(self) -> int | None:
        return self.height if self.height is not None and self.height == self.width else None

    def describe(self) -> str:
        dims = ", ".join(str(d) if d is not None else "?" for d in (self.batch, self.channels, self.height, self.width))
        return (f"{self.input_name} [{dims}] float32 → {self.output_name} [{self.batch or '?'}, {self.num_classes}], "
                f"opset {self.opset}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CleanReport:
    """What `clean_graph` changed, and how far the cleaned logits are from the original's."""

    changes: list[str]
    opset_before: int
    opset_after: int
    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    op_counts_after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ImportResult:
    source: Path
    output: Path
    io: ClassifierIO
    card: ModelCard
    clean: CleanReport

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "output": str(self.output), "io": self.io.to_dict(),
                "arch": self.card.arch, "num_classes": self.card.num_classes,
                "preprocessing": self.card.preprocessing.to_dict(), "changes": self.clean.changes,
                "max_abs_diff": self.clean.max_abs_diff}


# --- reading ---------------------------------------------------------------------------------------------------


def load_onnx(path: str | Path) -> Any:
    """The ModelProto at `path`; a missing or unreadable file is a UsageError."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    if zipfile.is_zipfile(source):  # torch.save / torch.jit.save archives are zip files; ONNX is protobuf
        raise UsageError(describe_zip(source))
    from resnet_deploy.artifact_checks import check_onnx_external_data, check_onnx_opset, require_graph

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{source}: not a readable ONNX model ({first_line(exc)})") from None
    require_graph(model, source)
    check_onnx_opset(model, source)
    check_onnx_external_data(source, model)  # a missing weights file is named, as in every other command
    load_external_data_for_model(model, str(source.parent))
    return model


def describe_zip(source: Path) -> str:
    """Why a zip file is no ONNX model, saying which zip it is: a PyTorch archive (its `data.pkl` or
    TorchScript `constants.pkl`), or a plain zip (naming an .onnx inside when there is one)."""
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{source}: a damaged zip archive ({exc}), not an ONNX model"
    if any(Path(name).name in ("data.pkl", "constants.pkl") for name in names):
        return (f"{source}: a PyTorch archive (torch.save or TorchScript), not an ONNX model; export it with "
                "torch.onnx.export, or give a state_dict to import-weights")
    inside = [name for name in names if name.lower().endswith(".onnx")]
    hint = f"; it holds {inside[0]}: extract it and give that file" if inside else ""
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return (f"{source}: a zip archive of {len(names)} file(s) ({shown}), not an ONNX model (an .onnx file is a "
            f"protobuf, not a zip){hint}")


def default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dims(value: Any) -> list[int | None]:
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def classifier_io(model: Any, source: str | Path = "model") -> ClassifierIO:
    """Read `model` as an image classifier (one NCHW float32 input, one [N, C] output) or refuse it."""
    import onnx

    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]  # old exporters list weights as inputs
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs) or "none"
        raise UsageError(f"{source}: {len(inputs)} inputs ({names}); an image classifier takes one NCHW image tensor")
    if len(graph.output) != 1:
        names = ", ".join(v.name for v in graph.output) or "none"
        raise UsageError(f"{source}: {len(graph.output)} outputs ({names}); an image classifier returns one "
                         "[N, C] tensor of class scores")
    image = inputs[0]
    elem = image.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(elem) if elem else "untyped"
        raise UsageError(f"{source}: input {image.name!r} is {dtype}; give the float32 model (NCHW, normalized)")
    dims = _dims(image)
    if len(dims) != 4:
        raise UsageError(f"{source}: input {image.name!r} has {len(dims)} dimensions; expected NCHW (4)")
    if dims[1] != 3:
        if dims[3] == 3:
            raise UsageError(f"{source}: input {image.name!r} is NHWC {_shape(dims)}; export the model channels-first "
                             "(NCHW: [N, 3, H, W])")
        raise UsageError(f"{source}: input {image.name!r} {_shape(dims)} has no 3-channel (RGB) dimension at NCHW's C")
    if dims[2] is not None and dims[3] is not None and dims[2] != dims[3]:
        raise UsageError(f"{source}: input {image.name!r} is {dims[2]}x{dims[3]}; the model card describes a square "
                         "crop")
    output = graph.output[0]
    out_dims = _dims(output) if output.type.tensor_type.HasField("shape") else []
    if len(out_dims) != 2 or out_dims[1] is None:
        out_dims = _inferred_output_dims(model, output.name) or out_dims
    if len(out_dims) != 2 or out_dims[1] is None:
        raise UsageError(f"{source}: output {output.name!r} is {_shape(out_dims)}: no class dimension "
                         "(an image classifier returns [N, C] class scores with C fixed)")
    return ClassifierIO(image.name, output.name, dims[0], 3, dims[2], dims[3], out_dims[1], default_opset(model))


def _inferred_output_dims(model: Any, name: str) -> list[int | None] | None:
    """The output shape by onnx shape inference, for exporters that leave graph outputs unshaped."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference gives up on some custom ops: then the graph's own annotation stands
        return None
    value = next((v for v in inferred.graph.output if v.name == name), None)
    return _dims(value) if value is not None and value.type.tensor_type.HasField("shape") else None


def _shape(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --- cleaning --------------------------------------------------------------------------------------------------


def clean_model(model: Any, source: str | Path = "model") -> tuple[Any, list[str]]:
    """The cleaned ModelProto (same I/O names, metadata and producer) and what changed, not yet verified."""
    import onnx

    before = Counter(node.op_type for node in model.graph.node)
    original, model = model, onnx.ModelProto()
    model.CopyFrom(original)  # onnxslim edits what it is given; the original is the reference
    model, changes = _raise_opset(model, source)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-clean-") as tmp:
        for round_ in range(MAX_CLEAN_ROUNDS):
            start = _signature(model)
            model = _ort_basic(_slim(model), Path(tmp) / f"round{round_}", source)
            if _signature(model) == start:
                break
    _drop_unused_opsets(model)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    model.producer_name, model.producer_version = original.producer_name, original.producer_version
    changes += _describe(before, Counter(node.op_type for node in model.graph.node))
    return model, changes


def _raise_opset(model: Any, source: str | Path) -> tuple[Any, list[str]]:
    from onnx import version_converter

    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model, []
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValueError for ops it has no adapter for
        raise UsageError(f"{source}: the onnx version converter cannot raise opset {opset} to {TARGET_OPSET} "
                         f"({first_line(exc)}); re-export the model at opset {MIN_OPSET} or newer") from None
    return converted, [f"opset {opset} → {TARGET_OPSET} (onnx version converter; FP16 Q/DQ needs {MIN_OPSET}+)"]


def _slim(model: Any) -> Any:
    import onnxslim

    # onnxslim may print a summary: stdout is for results.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(model)


def _ort_basic(model: Any, stem: Path, source: str | Path) -> Any:
    """ONNX Runtime's offline optimizer at the basic level: standard ONNX ops only, so the file stays portable."""
    import onnx

    src, dst = stem.with_suffix(".in.onnx"), stem.with_suffix(".out.onnx")
    onnx.save(model, str(src))
    session(src, level="basic", optimized_path=dst, shown_as=source)
    return onnx.load(str(dst))


def _signature(model: Any) -> tuple[Any, ...]:
    counts = Counter(node.op_type for node in model.graph.node)
    return len(model.graph.node), len(model.graph.initializer), tuple(sorted(counts.items()))


def _drop_unused_opsets(model: Any) -> None:
    """ORT's saved model imports a dozen domains it never uses; keep the default one and those nodes use."""
    used = {node.domain for node in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _describe(before: Counter[str], after: Counter[str]) -> list[str]:
    lines = []
    for op in sorted(set(before) | set(after), key=lambda o: (after[o] - before[o], o)):
        if before[op] > after[op]:
            lines.append(f"{op}: {before[op]} → {after[op]} ({_REASONS.get(op, 'folded or fused')})")
        elif after[op] > before[op]:
            lines.append(f"{op}: {before[op]} → {after[op]} (written by the optimizer)")
    if after["BatchNormalization"]:
        lines.append(f"{after['BatchNormalization']} BatchNormalization left (no convolution before it to fold into)")
    lines.append(f"nodes {sum(before.values())} → {sum(after.values())}" if lines else "nothing to clean")
    return lines


def verify_cleaned(original: Any, cleaned: Any, io: ClassifierIO, *, input_size: int | None = None,
                   seed: int = 0) -> float:
    """Max |logit difference| of `cleaned` against `original` on ONNX Runtime (random images); past
    VERIFY_TOLERANCE × max(1, |logit|) it is a CheckFailed and nothing is written."""
    size = io.input_size or input_size or 224
    images = random_images((io.batch or 2, 3, size, size), seed=seed)
    reference, candidate = _run(original, io, images), _run(cleaned, io, images)
    if candidate.shape != reference.shape:
        raise CheckFailed(f"the cleaned graph returns {candidate.shape}, the original {reference.shape}")
    diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())
    bound = VERIFY_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if not np.isfinite(diff) or diff > bound:
        raise CheckFailed(f"the cleaned graph moved the logits by {diff:.3g} (allowed {bound:.3g}); nothing written")
    return diff


def _run(model: Any, io: ClassifierIO, images: np.ndarray) -> np.ndarray:
    sess = session(model.SerializeToString())
    try:
        return np.asarray(sess.run([io.output_name], {io.input_name: images})[0], dtype=np.float32)
    except Exception as exc:  # ORT raises its own exception types
        raise UsageError(f"ONNX Runtime cannot run this model ({first_line(exc)})") from None


def clean_graph(source: str | Path, output: str | Path, *, input_size: int | None = None) -> CleanReport:
    """Clean a classifier ONNX into `output` (atomically, after verification); the source is never modified."""
    model = load_onnx(source)
    io = classifier_io(model, source)
    cleaned, report = clean_and_check(model, io, source, input_size=input_size)
    save_onnx(cleaned, output)
    return report


def clean_and_check(model: Any, io: ClassifierIO, source: str | Path, *,
                    input_size: int | None) -> tuple[Any, CleanReport]:
    """`clean_model` then `checked_clean`, in a child process: both run the graph in native code (constant
    folding, the verification run), which a hostile graph (an all-constant Loop of 2^40 trips) holds for
    ever; there Ctrl-C and SIGTERM still stop it."""
    from resnet_deploy.isolated import run_isolated

    return run_isolated(_clean_and_check_here, model, io, str(source), input_size=input_size,
                        what=f"{source}: cleaning the graph")


def _clean_and_check_here(model: Any, io: ClassifierIO, source: str, *,
                          input_size: int | None) -> tuple[Any, CleanReport]:
    cleaned, changes = clean_model(model, source)
    return cleaned, checked_clean(model, cleaned, io, changes, source, input_size=input_size)


def checked_clean(original: Any, cleaned: Any, io: ClassifierIO, changes: list[str], source: str | Path,
             *, input_size: int | None) -> CleanReport:
    import onnx

    after = classifier_io(cleaned, f"{source} (cleaned)")
    if (after.input_name, after.output_name, after.batch) != (io.input_name, io.output_name, io.batch):
        raise CheckFailed(f"{source}: cleaning changed the graph's I/O ({io.describe()} → {after.describe()})")
    try:
        onnx.checker.check_model(cleaned, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise CheckFailed(f"{source}: the cleaned graph fails onnx.checker ({first_line(exc)})") from None
    diff = verify_cleaned(original, cleaned, io, input_size=input_size)
    counts = Counter(node.op_type for node in cleaned.graph.node)
    return CleanReport(changes=changes, opset_before=io.opset, opset_after=after.opset,
                       nodes_before=len(original.graph.node), nodes_after=len(cleaned.graph.node),
                       max_abs_diff=diff, op_counts_after=dict(counts))


def save_onnx(model: Any, output: str | Path) -> Path:
    import onnx

    target = Path(output)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target
