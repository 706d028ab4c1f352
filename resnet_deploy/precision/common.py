"""What FP16 and INT8 share: the source model, metadata, gates and checks (the package docstring says how
both are made)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.artifact_checks import check_onnx_external_data, check_onnx_input
from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
from resnet_deploy.compare import LogitComparison
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.gates import RANDOM_INPUTS_REASON, RANDOM_WEIGHTS_REASON, build_gate_for, judge, render_gate
from resnet_deploy.metadata_keys import ARTIFACT_KEY, PRECISION_KEY  # noqa: F401 - re-exported to fp16/int8
from resnet_deploy.paths import require_input_file
from resnet_deploy.samples import images_or_random

# Default build-time gates on real held-out images, percent top-1 agreement with FP32: validate's gate plus
# the build margin, both from resnet_deploy.gates (one policy for build-engine and validate).
FP16_MIN_AGREEMENT = build_gate_for("fp16").min_agreement
INT8_MIN_AGREEMENT = build_gate_for("int8").min_agreement
FP16_MAX = 65504.0
FP16_SAFE_MAX = FP16_MAX / 2  # headroom for images brighter than the check images
FP16_CONVERTER_CLIP = 1e4  # onnxconverter-common clips FP16 initializers to this magnitude
RANDOM_CHECK_SAMPLES = 64  # random inputs when no check images are given
MIN_FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19
INT8_EXTRA_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,  # activations: int8, zero point 0 (TensorRT accepts nothing else)
    "WeightSymmetric": True,  # weights: int8 in [-127, 127], zero point 0
    "QuantizeBias": False,  # TensorRT's DequantizeLinear takes no int32 bias
    "AddQDQPairToWeight": True,  # float weights behind Q/DQ: the explicit-quantization form of TensorRT's docs
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},  # one scale per output channel
}


@dataclass
class Judged:
    """A model's logits on check images against FP32's: agreement (with its 95 % interval), and top-1 of both
    against the labels when the images have them. What every build-time gate judges."""

    comparison: LogitComparison
    reference_top1: float | None = None  # FP32's top-1 on the labelled check images, percent
    top1: float | None = None
    top1_delta_p: float | None = None  # McNemar's exact test on the images only one of the two gets right
    top1_delta_ci: tuple[float, float] | None = None  # 95 % paired (Newcombe) interval of the delta, points

    @property
    def top1_delta(self) -> float | None:
        return None if self.top1 is None or self.reference_top1 is None else self.top1 - self.reference_top1

    @property
    def agreement_ci(self) -> tuple[float, float]:
        from resnet_deploy.confidence import wilson_percent

        n = self.comparison.images
        return wilson_percent(round(self.comparison.agreement * n / 100), n)

    def describe(self) -> str:
        low, high = self.agreement_ci
        text = (f"top-1 agreement {self.comparison.agreement:.2f}% [95% CI {low:.2f}, {high:.2f}], max |Δ logit| "
                f"{self.comparison.max_abs_logit_diff:.3g}")
        if self.top1_delta is not None:
            p = f", McNemar p {self.top1_delta_p:.2g}" if self.top1_delta_p is not None else ""
            text += f"; top-1 {self.top1:.2f}% vs FP32 {self.reference_top1:.2f}% (Δ {self.top1_delta:+.2f}{p})"
        return text

    def gated_delta(self, max_drop: float | None) -> tuple[float | None, str | None]:
        """The top-1 delta the build gate judges, and a note when it is set aside. A few hundred or thousand
        held-out images cannot pin a drop to a fraction of a point (low-margin images flip both ways), so the
        build refuses a drop only when it is beyond `max_drop` with 95 % confidence (the paired interval lies
        wholly below -max_drop); a point estimate beyond the bound that the interval does not confirm is left to
        `validate` on a test set, and said so."""
        delta = self.top1_delta
        if delta is None or max_drop is None or -delta <= max_drop or self.top1_delta_ci is None \
                or self.top1_delta_ci[1] < -max_drop:
            return delta, None
        low, high = self.top1_delta_ci
        return None, (f"top-1 Δ {delta:+.2f} points on {self.comparison.images} check images (95 % CI {low:+.2f} to "
                      f"{high:+.2f}) is beyond the {max_drop:g}-point bound, but not with confidence on this many "
                      "images: validate on a test set judges it")

    def to_dict(self) -> dict[str, Any]:
        low, high = self.agreement_ci
        return {**self.comparison.to_dict(), "agreement_ci": [low, high], "reference_top1": self.reference_top1,
                "top1": self.top1, "top1_delta": self.top1_delta, "top1_delta_p": self.top1_delta_p,
                "top1_delta_ci": list(self.top1_delta_ci) if self.top1_delta_ci is not None else None}


def judged(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> Judged:
    """`candidate` logits against FP32's `reference` on the same images (`labels`: their classes, or None)."""
    from resnet_deploy.compare import compare_logits

    comparison = compare_logits(reference, candidate)
    if labels is None or len(labels) != len(reference):
        return Judged(comparison)
    from resnet_deploy.confidence import PairedCounts, mcnemar_exact_p, paired_delta_interval

    ref_right, cand_right = reference.argmax(1) == labels, candidate.argmax(1) == labels
    counts = PairedCounts(int(np.sum(ref_right & cand_right)), int(np.sum(cand_right & ~ref_right)),
                          int(np.sum(ref_right & ~cand_right)), int(np.sum(~ref_right & ~cand_right)))
    low, high = paired_delta_interval(counts)
    return Judged(comparison, float(ref_right.mean() * 100), float(cand_right.mean() * 100),
                  mcnemar_exact_p(counts.only_candidate, counts.only_reference), (100.0 * low, 100.0 * high))


@dataclass
class CheckSet:
    """The held-out images a precision model was judged on, kept for the target's check of its own artifact
    (the same images, the same FP32 logits, one gate). Not serialized."""

    images: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray  # FP32 logits
    arithmetic: np.ndarray | None  # INT8: logits of the Q/DQ arithmetic of the model written (optimizations off)
    data: str  # "held-out images", "calibration images" or "random"


@dataclass
class CalibrationReport:
    requested: str  # entropy | minmax | percentile | auto
    method: str  # the method whose model was kept
    scores: dict[str, dict[str, Any]]  # per method: agreement, max_abs_logit_diff, cache status
    samples: int
    seed: int
    data: str  # the folder, or "random"
    set_sha256: str
    random: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrecisionResult:
    path: Path
    precision: str  # "fp16" or "int8"
    fp16_remainder: bool
    source: Path
    source_sha256: str
    sha256: str
    agreement: float  # top-1 agreement with the FP32 source on the check images, percent
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    check_images: int
    check_data: str  # what the check images were
    gate: float | None  # the agreement the check had to reach (None: informational only)
    random_weights: bool
    fp32_nodes: list[str] = field(default_factory=list)  # FP16: nodes kept in FP32
    calibration: CalibrationReport | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    gate_override: float | None = None  # --min-agreement, when given
    mixed: Any = None  # INT8: the mixed-precision search (int8.MixedPrecision) when full INT8 missed its gate
    float_by_rule: list[Any] = field(default_factory=list)  # INT8: nodes never quantized (float_by_rule.FloatNode)
    judged: Judged | None = None  # the check in full: agreement interval, top-1 against labels
    weight_bits: int | None = None  # INT8: 8, or 7 for CPUs whose integer kernels saturate (precision/isa.py)
    cpu_target: str | None = None  # INT8: the CPU class the weights were chosen for
    check_set: CheckSet | None = field(default=None, repr=False)  # for the target's check; not serialized

    @property
    def informational(self) -> str | None:
        """Why the agreement check did not count (random weights or random inputs); None when it did."""
        if self.random_weights:
            return RANDOM_WEIGHTS_REASON
        return RANDOM_INPUTS_REASON if self.check_data == "random" else None

    def gate_text(self) -> str:
        """The build gate in the words validate uses for its own (`gates.render_gate`)."""
        if self.gate is None:
            return f"informational: {self.informational or 'not gated'}"
        labelled = self.judged is not None and self.judged.top1_delta is not None
        return render_gate(build_gate_for(self.precision, min_agreement=self.gate_override, labelled=labelled))

    def to_dict(self) -> dict[str, Any]:
        check_set, self.check_set = self.check_set, None  # arrays stay out of the JSON
        try:
            data = asdict(self)
        finally:
            self.check_set = check_set
        data.pop("check_set", None)
        data["judged"] = self.judged.to_dict() if self.judged is not None else None
        data["path"], data["source"] = str(self.path), str(self.source)
        data["calibration"] = self.calibration.to_dict() if self.calibration else None
        data["mixed"] = self.mixed.to_dict() if self.mixed is not None else None
        data["informational"] = self.informational
        data["gate_text"] = self.gate_text()
        return data


# --- source and metadata -------------------------------------------------------------------------------


@dataclass
class _Source:
    path: Path
    model: Any  # onnx.ModelProto
    props: dict[str, str]
    card: ModelCard
    sha256: str
    random_weights: bool
    input_name: str
    input_shape: list[Any]
    opset: int


def read_source(path: str | Path) -> _Source:
    """The FP32 source ONNX with its model card; anything else is refused with the reason."""
    import onnx

    from engines.onnxruntime_engine import graph_precision

    source = require_input_file(path)
    check_onnx_external_data(source)  # a missing weights file: named, exit 2, as in validate and inspect
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{source}: not a readable ONNX model ({exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if ARTIFACT_KEY in props:
        raise UsageError(f"{source}: this is a {props[ARTIFACT_KEY]} artifact, optimized for one runtime; "
                         "give the FP32 ONNX model it was built from")
    precision = graph_precision(source)
    if precision != "fp32":
        raise UsageError(f"{source}: the source must be the FP32 ONNX model, this one is {precision}")
    if CARD_METADATA_KEY not in props:
        raise UsageError(f"{source}: the ONNX model carries no resnet-deploy model card in its metadata; "
                         "export it with `resnet-deploy export`")
    card = check_onnx_input(source, ModelCard.from_json(props[CARD_METADATA_KEY]), model)
    random_weights = props.get("random_weights") == "true" or bool(card.lineage.get("random_weights"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _Source(source, model, props, card, sha256_file(source), random_weights, model.graph.input[0].name,
                   shape, opset)


def set_metadata(model: Any, props: dict[str, str]) -> None:
    """Replace the model's metadata_props with `props` (in order)."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def drop_unused_opsets(model: Any) -> None:
    """Keep the default opset and the domains nodes use; ORT's pre-processing imports a dozen it never uses."""
    used = {node.domain for node in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _check_images_or_random(src: _Source, images: np.ndarray | None, seed: int) -> tuple[np.ndarray, str]:
    size = src.card.preprocessing.input_size
    if images is not None and (images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size)):
        raise UsageError(f"check images must be preprocessed NCHW arrays of shape (N, 3, {size}, {size}), "
                         f"got {tuple(images.shape)}")
    return images_or_random(images, (3, size, size), count=RANDOM_CHECK_SAMPLES, seed=seed)


def _gate(min_agreement: float | None, default: float, src: _Source, data: str) -> float | None:
    """The agreement to enforce: none for random weights or random inputs (logits there carry no meaning)."""
    if src.random_weights or data == "random":
        return None
    return default if min_agreement is None else min_agreement


def _enforce(comparison: LogitComparison | Judged, gate: float | None, what: str, output: Path, hint: str, *,
             precision: str = "int8", override: float | None = None) -> None:
    if gate is None:
        return
    check = comparison if isinstance(comparison, Judged) else Judged(comparison)
    comparison = check.comparison
    if not comparison.finite:
        raise CheckFailed(f"{output}: the {what} model produces inf/NaN logits on the check images; nothing was "
                          "written")
    policy = build_gate_for(precision, min_agreement=override, labelled=check.top1_delta is not None)
    delta, _ = check.gated_delta(policy.max_top1_drop)
    verdict = judge(policy, agreement=comparison.agreement, top1_delta=delta)
    if not verdict.passed:
        raise CheckFailed(
            f"{output}: the {what} model on {comparison.images} held-out images: {check.describe()}; below the "
            f"build gate: {render_gate(policy)}; nothing was written. {hint}")


# --- FP16 -----------------------------------------------------------------------------------------------


# --- helpers --------------------------------------------------------------------------------------------


def _session(path: Path) -> Any:
    from resnet_deploy.onnx_check import session

    return session(path)


def _verification(comparison: LogitComparison, data: str) -> dict[str, Any]:
    return {"reference": "FP32 source on ONNX Runtime (CPU)", "data": data, **comparison.to_dict()}


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _quiet():
    """The converters print chatter and warn on stdout/stderr; stdout is for results only."""
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


