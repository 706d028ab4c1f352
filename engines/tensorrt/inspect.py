"""Realized precision: read the engine inspector's JSON and say which precision each layer runs in.

A TensorRT build can silently run most layers in FP32 although the user asked for FP16 or INT8, so
after every build the inspector's layer information (built with `ProfilingVerbosity.DETAILED`) is
summarized here, and an FP16/INT8 engine whose compute layers are mostly FP32 is rejected.

The inspector has no "Precision" key; a layer's precision is derived from its data: the data type of
its first input, else of its first output, else (a layer whose tensors still lack a format) its weights
type (`Weights: {"Type": "Int8", ...}`). The builder reads the JSON through an execution context set to
the opt shape, which is what makes the inspector print formats at all on a dynamic-batch engine. Cast
layers (the FP32 I/O of an FP16 graph) convert rather than compute and are not counted, like reformats.
Formats documented by NVIDIA and accepted here:

* 10.x: `{"Layers": [...], "Bindings": ["input", "logits"]}`; each layer has `Name`, `LayerType`,
  `Inputs`/`Outputs` (with `Name`, `Dimensions`, `Format/Datatype`), `Weights`, `TacticName`.
  Datatype strings come long ("Row major linear FP32", "Channel major FP16 format where channel % 8 == 0",
  "Thirty-two wide channel vectorized row major Int8 format") or short ("Float", "Half", "Int8", "BFloat16").
* 11.x: `Bindings` is replaced by `I/O Tensors` (objects), and a tensor's `Format/Datatype` is split into
  `Format` and `DataType` (also seen spelled `Datatype`).
* Without DETAILED verbosity, `Layers` is a list of names only: nothing can be verified.

Unknown is not verified: a compute layer whose data type cannot be read ("unknown": no format text and no
weights) may run in FP32, so an FP16/INT8 verdict is only `verified` when it holds whatever the unknown
layers run in (all of them counted as FP32, and none as INT8). Otherwise it is `passed=False,
verified=False` with the reason, and the build refuses the engine: it asks for DETAILED verbosity and
attaches a shaped execution context, so at that verbosity the docs promise per-layer formats.

Pages: Engine Inspector, https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html
(10.x) and "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x",
https://docs.nvidia.com/deeplearning/tensorrt/11.3.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html;
Python `EngineInspector` (10.x and 11.4): https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/EngineInspector.html
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: layer types that move, convert or relabel data without computing (never counted)
NON_COMPUTE_LAYER_TYPES = frozenset({"reformat", "noop", "signal", "wait", "cast"})
#: precisions below FP32 (what an fp16/int8 request hopes to see)
REDUCED_PRECISIONS = frozenset({"fp16", "bf16", "int8", "fp8", "int4", "fp4"})
#: an fp16/int8 engine whose compute layers are more FP32 than this fraction is rejected
MAX_FP32_FRACTION = 0.5

# Ordered: the first match wins, so BF16 is tested before FP32's "Float", UINT8 before INT8, and the
# 4-bit types before anything that could contain them.
_DATATYPE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("bf16", r"bfloat16|\bbf16\b"),
    ("fp8", r"\bfp8\b|e4m3"),
    ("fp4", r"\bfp4\b|e2m1"),
    ("int4", r"\bint4\b"),
    ("uint8", r"\buint8\b"),
    ("int8", r"\bint8\b"),
    ("fp16", r"\bfp16\b|\bhalf\b|float16"),
    ("int32", r"\bint32\b"),
    ("int64", r"\bint64\b"),
    ("bool", r"\bbool\b"),
    ("fp32", r"\bfp32\b|\bfloat\b|float32"),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _DATATYPE_PATTERNS)
_OTHER_PROFILE = re.compile(r"\[profile +[1-9]\d*\]")


def datatype_from_text(text: Any) -> str | None:
    """'Channel major FP16 format where channel % 8 == 0' → 'fp16'; 'BFloat16' → 'bf16'; unknown → None."""
    if not isinstance(text, str):
        return None
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return None


def tensor_datatype(tensor: Any) -> str | None:
    """The data type of one inspector tensor entry, in any documented spelling."""
    if isinstance(tensor, str):
        return datatype_from_text(tensor)
    if not isinstance(tensor, dict):
        return None
    for key in ("DataType", "Datatype", "Data Type", "Format/Datatype", "Format"):
        found = datatype_from_text(tensor.get(key))
        if found:
            return found
    return None


@dataclass(frozen=True)
class LayerPrecision:
    name: str
    layer_type: str
    precision: str  # fp32, fp16, bf16, int8, fp8, ..., or "unknown"
    compute: bool


@dataclass
class PrecisionSummary:
    layers: list[LayerPrecision] = field(default_factory=list)
    detailed: bool = False  # False: the inspector gave names only (no DETAILED verbosity)
    io_tensors: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Compute layers per realized precision, most common first."""
        return dict(Counter(layer.precision for layer in self.layers if layer.compute).most_common())

    @property
    def compute_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.compute)

    def fraction(self, *precisions: str) -> float:
        total = self.compute_layers
        if not total:
            return 0.0
        return sum(1 for layer in self.layers if layer.compute and layer.precision in precisions) / total


def _is_compute(layer: dict[str, Any]) -> bool:
    layer_type = str(layer.get("LayerType") or layer.get("Type") or "")
    if layer_type.replace(" ", "").lower() in NON_COMPUTE_LAYER_TYPES:
        return False
    # Reformat layers inserted by the builder are named so even when LayerType is absent.
    return not str(layer.get("Name", "")).startswith("Reformatting CopyNode")


def layer_precision(layer: dict[str, Any]) -> str:
    """Realized precision of one detailed inspector layer: its tensors' data type, else its weights type."""
    for key in ("Inputs", "Outputs"):
        tensors = layer.get(key)
        if isinstance(tensors, list):
            for tensor in tensors:
                found = tensor_datatype(tensor)
                if found:
                    return found
    weights = layer.get("Weights")
    weights_type = datatype_from_text(weights.get("Type")) if isinstance(weights, dict) else None
    return weights_type or "unknown"


def summarize_engine_information(info: str | dict[str, Any] | list[Any]) -> PrecisionSummary:
    """Parse `inspector.get_engine_information(trt.LayerInformationFormat.JSON)` (text or parsed)."""
    data = json.loads(info) if isinstance(info, str) else info
    if isinstance(data, dict):
        raw_layers = data.get("Layers", [])
        io = data.get("I/O Tensors", data.get("Bindings", []))
    else:
        raw_layers, io = data, []
    summary = PrecisionSummary()
    for tensor in io if isinstance(io, list) else []:
        name = tensor.get("Name") if isinstance(tensor, dict) else tensor
        if isinstance(name, str) and not _OTHER_PROFILE.search(name):
            summary.io_tensors.append(name)
    for raw in raw_layers if isinstance(raw_layers, list) else []:
        if not isinstance(raw, dict):
            continue  # names only (not DETAILED): nothing to read
        name = str(raw.get("Name", ""))
        if _OTHER_PROFILE.search(name):
            continue  # the same layer again for another optimization profile
        summary.detailed = True
        summary.layers.append(LayerPrecision(name=name, layer_type=str(raw.get("LayerType", "")),
                                             precision=layer_precision(raw), compute=_is_compute(raw)))
    return summary


@dataclass(frozen=True)
class PrecisionVerdict:
    requested: str
    passed: bool
    verified: bool  # False: the realized precision could not be read (names only, or too many unknown layers)
    fp32_fraction: float
    reduced_fraction: float
    counts: dict[str, int]
    message: str
    unknown_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "passed": self.passed, "verified": self.verified,
                "fp32_fraction": round(self.fp32_fraction, 4), "reduced_fraction": round(self.reduced_fraction, 4),
                "unknown_fraction": round(self.unknown_fraction, 4), "counts": self.counts, "message": self.message}


def precision_verdict(summary: PrecisionSummary, requested: str,
                      max_fp32_fraction: float = MAX_FP32_FRACTION) -> PrecisionVerdict:
    """Did an fp16/int8 engine end up mostly FP32? (fp32 requests always pass.)

    An fp16/int8 verdict is `verified` only when it holds whatever the "unknown" layers run in; when it
    does not (or the inspector gave names only), it is `passed=False, verified=False`: not verified is
    not a pass.
    """
    counts = summary.counts
    total = summary.compute_layers
    fp32 = summary.fraction("fp32")
    unknown = summary.fraction("unknown")
    reduced = summary.fraction(*REDUCED_PRECISIONS)
    shown = ", ".join(f"{n} {p.upper()}" for p, n in counts.items()) or "none"
    label = requested.upper()

    def verdict(passed: bool, verified: bool, message: str) -> PrecisionVerdict:
        return PrecisionVerdict(requested, passed, verified, fp32, reduced, counts, message, unknown)

    if requested == "fp32":
        return verdict(True, total > 0 and unknown < 1.0, f"FP32 engine; compute layers: {shown}")
    if not summary.detailed or total == 0:
        return verdict(False, False, f"the realized precision of this {label} engine could not be verified: the "
                                     "engine inspector gave layer names only, no per-layer data types (the plan "
                                     "was not built with ProfilingVerbosity.DETAILED)")
    if fp32 > max_fp32_fraction:  # FP32 alone is the majority, whatever the unknown layers are
        return verdict(False, True,
                       f"a {label} build ran {fp32:.0%} of its {total} compute layers in FP32 "
                       f"({shown}): TensorRT did not honour the {label} graph; check that the ONNX "
                       f"really is {label} (FP16-typed tensors or Q/DQ nodes) before shipping it")
    unverified = (f"the realized precision of this {label} engine could not be verified: "
                  f"{counts.get('unknown', 0)} of its {total} compute layers report no data type ({shown}) "
                  "and may run in FP32; the inspector prints formats only for a plan built with "
                  "ProfilingVerbosity.DETAILED and an execution context whose input shapes are set")
    if requested == "int8" and counts.get("int8", 0) == 0:
        if unknown:
            return verdict(False, False, unverified)
        return verdict(False, True, f"an INT8 build has no INT8 compute layer ({shown}): the Q/DQ nodes were not "
                                    "used; check the quantized ONNX")
    if fp32 + unknown > max_fp32_fraction:  # the unknown layers could make FP32 the majority
        return verdict(False, False, unverified)
    return verdict(True, True, f"{label} engine; {reduced:.0%} of {total} compute layers below FP32 ({shown})")
