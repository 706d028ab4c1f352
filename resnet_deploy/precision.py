"""FP16 and calibrated INT8 (Q/DQ) ONNX models, verified against their FP32 source on ONNX Runtime.

Precision is decided in ONNX (see DESIGN.md): TensorRT 11 builds only strongly typed networks, so
FP16 arrives as an FP16-typed graph and INT8 as explicit QuantizeLinear/DequantizeLinear nodes.

FP16 (`convert_fp16`): onnxconverter-common's `convert_float_to_float16` with float32 input and
output kept (Casts inside). Before converting, the FP32 model runs on the check images with every
intermediate tensor exposed; any node producing or consuming a tensor that comes within a factor two
of FP16's range (65504), or holding a weight beyond the converter's clip value, stays FP32. Random
weights (latency work) are converted whole: their activations are meaningless and often huge.

INT8 (`quantize_int8`): ONNX Runtime's `quant_pre_process` then `quantize_static` in QDQ format,
with the options TensorRT needs (the same ones NVIDIA's ModelOpt passes to ORT): per-channel
symmetric int8 weights on the output-channel axis kept as float weights behind a Q/DQ pair,
per-tensor symmetric int8 activations (zero point 0), float biases (TensorRT's DequantizeLinear
takes no int32 input). Activation ranges come from `calibration.py`. `fp16_remainder` converts
what stays unquantized to FP16 (Q/DQ scales become FP16, which needs opset 19).

Both write the model atomically and only after it passed its check; the metadata of the source
(model card, preprocessing) is kept, and `resnet_deploy.precision`, the calibration and the check
are added.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.calibration import (
    DEFAULT_CHECK_SAMPLES,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    METHODS,
    CacheStatus,
    CalibrationImages,
    ProgressFn,
    cache_key,
    cache_path_for,
    calibration_batch,
    compute_ranges,
    load_calibration_images,
    random_calibration_images,
    read_cache,
    write_cache,
    write_ort_cache,
)
from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.onnx_check import LogitComparison, activation_maxima, compare_logits, compare_models, run_logits

PRECISION_KEY = "resnet_deploy.precision"
ARTIFACT_KEY = "resnet_deploy.artifact"  # set on runtime-specific artifacts (ONNX Runtime target)
FP16_MIN_AGREEMENT = 99.0  # default gates on real images, percent top-1 agreement with FP32
INT8_MIN_AGREEMENT = 95.0
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"], data["source"] = str(self.path), str(self.source)
        data["calibration"] = self.calibration.to_dict() if self.calibration else None
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

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{source}: no such ONNX file")
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
    card = ModelCard.from_json(props[CARD_METADATA_KEY])
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
    if images is not None:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise UsageError(f"check images must be preprocessed NCHW arrays of shape (N, 3, {size}, {size}), "
                             f"got {tuple(images.shape)}")
        return images.astype(np.float32, copy=False), "images"
    rng = np.random.default_rng(seed)
    return rng.standard_normal((RANDOM_CHECK_SAMPLES, 3, size, size), dtype=np.float32), "random"


def _gate(min_agreement: float | None, default: float, src: _Source, data: str) -> float | None:
    """The agreement to enforce: none for random weights or random inputs (logits there carry no meaning)."""
    if src.random_weights or data == "random":
        return None
    return default if min_agreement is None else min_agreement


def _enforce(comparison: LogitComparison, gate: float | None, what: str, output: Path, hint: str) -> None:
    if gate is None:
        return
    if not comparison.finite:
        raise CheckFailed(f"{output}: the {what} model produces inf/NaN logits on the check images; nothing was "
                          "written")
    if comparison.agreement < gate:
        raise CheckFailed(
            f"{output}: the {what} model agrees with FP32 on {comparison.agreement:.2f}% of top-1 predictions "
            f"(max |Δ logit| {comparison.max_abs_logit_diff:.3g}), below the {gate:g}% gate; nothing was written. "
            f"{hint}")


# --- FP16 -----------------------------------------------------------------------------------------------


def convert_fp16(
    source_onnx: str | Path,
    output: str | Path,
    *,
    check_images: np.ndarray | None = None,
    min_agreement: float | None = None,
    seed: int = 0,
) -> PrecisionResult:
    """An FP16-typed copy of the FP32 `source_onnx` (float32 I/O), checked against it on ONNX Runtime.

    `check_images`: preprocessed NCHW float32 images (real ones make the check a gate); None uses
    random inputs and only reports. Raises CheckFailed, writing nothing, when the gate fails.
    """
    from onnxconverter_common import float16

    started = time.perf_counter()
    src = read_source(source_onnx)
    output = Path(output)
    images, data = _check_images_or_random(src, check_images, seed)
    batch = 16 if src.card.preprocessing.input_size <= 64 else 2
    warnings: list[str] = []
    if src.random_weights:
        # Random activations grow without bound through an untrained net; keep the graph whole for latency work.
        reference, blocked = None, []
    else:
        _name_nodes(src.model)  # the converter blocks nodes by name
        reference, maxima = activation_maxima(src.model, images, batch=batch)
        blocked = _fp16_unsafe_nodes(src.model, maxima)
        if blocked:
            warnings.append(f"{len(blocked)} node(s) kept in FP32 (their values would overflow FP16): "
                            + ", ".join(blocked[:5]) + (" …" if len(blocked) > 5 else ""))
    with _quiet():
        model16 = float16.convert_float_to_float16(src.model, keep_io_types=True, node_block_list=blocked or None)
    props = dict(src.props)
    props.update({
        PRECISION_KEY: "fp16",
        "resnet_deploy.source_onnx_sha256": src.sha256,
        "resnet_deploy.fp16": json.dumps({"converter": f"onnxconverter-common {_version('onnxconverter-common')}",
                                          "io": "float32", "fp32_nodes": blocked}),
    })
    with atomic_path(output) as tmp:
        import onnx

        set_metadata(model16, props)
        onnx.save(model16, str(tmp))
        if reference is None:
            reference = run_logits(_session(src.path), images, batch=batch)
        comparison = compare_logits(reference, run_logits(_session(tmp), images, batch=batch))
        gate = _gate(min_agreement, FP16_MIN_AGREEMENT, src, data)
        _enforce(comparison, gate, "FP16", output, "Lower --min-agreement if this difference is acceptable.")
        # Record the check in the file itself, then write again (the check ran on these exact weights).
        props["resnet_deploy.verification"] = json.dumps(_verification(comparison, data))
        set_metadata(model16, props)
        onnx.save(model16, str(tmp))
    if not comparison.finite:
        warnings.append("the FP16 model produces inf/NaN logits on the check inputs (random weights overflow FP16)")
    return PrecisionResult(
        path=output, precision="fp16", fp16_remainder=False, source=src.path, source_sha256=src.sha256,
        sha256=sha256_file(output), agreement=comparison.agreement, max_abs_logit_diff=comparison.max_abs_logit_diff,
        mean_abs_logit_diff=comparison.mean_abs_logit_diff, check_images=comparison.images, check_data=data,
        gate=gate, random_weights=src.random_weights, fp32_nodes=blocked, seconds=time.perf_counter() - started,
        warnings=warnings,
    )


def _name_nodes(model: Any) -> None:
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def _fp16_unsafe_nodes(model: Any, maxima: dict[str, float]) -> list[str]:
    """Nodes that produce or consume a tensor near FP16's limit, or hold a weight the converter would clip."""
    from onnx import numpy_helper

    hot = {name for name, value in maxima.items() if not value <= FP16_SAFE_MAX}  # also catches NaN
    big = {init.name for init in model.graph.initializer
           if init.data_type == 1 and np.abs(numpy_helper.to_array(init)).max(initial=0.0) > FP16_CONVERTER_CLIP}
    return [node.name for node in model.graph.node
            if hot.intersection(node.output) or hot.intersection(node.input) or big.intersection(node.input)]


# --- INT8 -------------------------------------------------------------------------------------------------


def quantize_int8(
    source_onnx: str | Path,
    output: str | Path,
    *,
    calib_data: Path | None,
    samples: int = DEFAULT_SAMPLES,
    method: str = DEFAULT_METHOD,
    fp16_remainder: bool = False,
    seed: int = 0,
    random_calibration: bool = False,
    check_samples: int = DEFAULT_CHECK_SAMPLES,
    cache_base: str | Path | None = None,
    min_agreement: float | None = None,
    progress: ProgressFn | None = None,
) -> PrecisionResult:
    """A Q/DQ INT8 model of the FP32 `source_onnx`, calibrated on `calib_data` and checked against it.

    `method` is percentile (the default), entropy, minmax or auto (each method, scored on held-out
    images by top-1 agreement with FP32; the best is kept). Calibration caches live beside `cache_base` (default
    `output`) as `<name>.calib-<method>.json`. Raises UsageError for bad input, CheckFailed (writing
    nothing) when the model misses the agreement gate.
    """
    import onnx

    started = time.perf_counter()
    if method not in (*METHODS, "auto"):
        raise UsageError(f"--calib-method must be one of {', '.join(METHODS)} or auto, got {method!r}")
    if calib_data is None and not random_calibration:
        raise UsageError("INT8 needs calibration images: pass --calib-data DIR (any folder of images)")
    src = read_source(source_onnx)
    output = Path(output)
    if fp16_remainder and src.opset < MIN_FP16_QDQ_OPSET:
        raise UsageError(f"{src.path}: opset {src.opset}; INT8 with an FP16 remainder needs FP16 Q/DQ scales, "
                         f"which need opset {MIN_FP16_QDQ_OPSET} or newer: re-export with --opset 20")
    pre = src.card.preprocessing
    if random_calibration:
        calib = random_calibration_images(pre, samples=samples, seed=seed, check_samples=min(check_samples, 64))
    else:
        assert calib_data is not None
        calib = load_calibration_images(calib_data, pre, samples=samples, check_samples=check_samples, seed=seed,
                                        progress=progress)
    batch, static = calibration_batch(src.input_shape, pre.input_size)
    methods = list(METHODS) if method == "auto" else [method]
    base = Path(cache_base) if cache_base is not None else output
    warnings: list[str] = []

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = tmp / "prepared.onnx"
        _pre_process(src.path, prepared)
        reference = run_logits(_session(src.path), calib.check_images, batch=batch)
        if progress is not None:
            progress("check fp32", len(calib.check_images), len(calib.check_images))
        candidates: dict[str, tuple[Path, LogitComparison, CacheStatus]] = {}
        for name in methods:
            ranges, status = _ranges(src, calib, name, prepared, base, batch, static, samples, progress)
            quantized = tmp / f"{name}.onnx"
            _quantize(prepared, quantized, ranges, name, tmp)
            if fp16_remainder:
                _fp16_remainder(quantized)
            comparison = compare_logits(reference, run_logits(_session(quantized), calib.check_images, batch=batch))
            if progress is not None:
                progress(f"check {name}", len(calib.check_images), len(calib.check_images))
            candidates[name] = (quantized, comparison, status)
        best = max(methods, key=lambda m: (candidates[m][1].finite, candidates[m][1].agreement,
                                           -candidates[m][1].max_abs_logit_diff))
        best_path, comparison, _ = candidates[best]
        data = "random" if calib.random else ("held-out images" if calib.check_held_out else "calibration images")
        gate = _gate(min_agreement, INT8_MIN_AGREEMENT, src, data)
        _enforce(comparison, gate, f"INT8 ({best})", output, "Try --calib-method auto (or another method), "
                 "more --calib-samples, or lower --min-agreement if this difference is acceptable.")
        report = CalibrationReport(
            requested=method, method=best, samples=len(calib.images), seed=seed, data=calib.source,
            set_sha256=calib.sha256, random=calib.random,
            scores={m: {**candidates[m][1].to_dict(), "cache": candidates[m][2].to_dict()} for m in methods},
        )
        model = onnx.load(str(best_path))
        props = dict(src.props)
        props.update({
            PRECISION_KEY: "int8",
            "resnet_deploy.fp16_remainder": "true" if fp16_remainder else "false",
            "resnet_deploy.source_onnx_sha256": src.sha256,
            "resnet_deploy.quantization": json.dumps({
                "format": "QDQ", "weights": "int8, per-channel (output channel), symmetric",
                "activations": "int8, per-tensor, symmetric (zero point 0)", "bias": "float",
                "remainder": "fp16" if fp16_remainder else "fp32", "tool": f"onnxruntime {_version('onnxruntime')}",
            }),
            "resnet_deploy.calibration": json.dumps(_calibration_prop(report)),
            "resnet_deploy.verification": json.dumps(_verification(comparison, data)),
        })
        set_metadata(model, props)
        drop_unused_opsets(model)
        with atomic_path(output) as final:
            onnx.save(model, str(final))
    if calib.random:
        warnings.append("calibrated on RANDOM images: fine for latency work, meaningless for accuracy")
    return PrecisionResult(
        path=output, precision="int8", fp16_remainder=fp16_remainder, source=src.path, source_sha256=src.sha256,
        sha256=sha256_file(output), agreement=comparison.agreement, max_abs_logit_diff=comparison.max_abs_logit_diff,
        mean_abs_logit_diff=comparison.mean_abs_logit_diff, check_images=comparison.images, check_data=data,
        gate=gate, random_weights=src.random_weights, calibration=report, seconds=time.perf_counter() - started,
        warnings=warnings,
    )


def _calibration_prop(report: CalibrationReport) -> dict[str, Any]:
    """The calibration as recorded in the model: method, data, set hash and each method's score."""
    data = report.to_dict()
    data["scores"] = {method: {"agreement": score["agreement"], "max_abs_logit_diff": score["max_abs_logit_diff"]}
                      for method, score in report.scores.items()}
    return data


def _ranges(src: _Source, calib: CalibrationImages, method: str, prepared: Path, base: Path, batch: int,
            static: bool, samples: int, progress: ProgressFn | None) -> tuple[dict[str, Any], CacheStatus]:
    """The method's activation ranges: from the cache beside the model when its key matches, else computed."""
    key = cache_key(source_sha256=src.sha256, images=calib, method=method, samples=samples)
    path = cache_path_for(base, method)
    ranges, status = read_cache(path, key)
    if ranges is None:
        ranges = compute_ranges(prepared, calib.images, method, input_name=src.input_name, batch=batch,
                                static=static, progress=progress)
        write_cache(path, key, ranges)
    elif progress is not None:
        progress(f"calibrate {method} (cached)", len(calib.images), len(calib.images))
    return ranges, CacheStatus(path, status)


def _pre_process(source: Path, prepared: Path) -> None:
    """ONNX Runtime's recommended step before quantization: shape inference and graph cleanup."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # symbolic shape inference fails on some graphs; ONNX's own inference then suffices
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)


def _quantize(prepared: Path, output: Path, ranges: dict[str, Any], method: str, tmp: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cache = tmp / f"ranges-{method}.json"
    write_ort_cache(ranges, cache)
    ort_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[method]
    with _quiet():
        quantize_static(
            str(prepared), str(output), None, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=ort_method,
            extra_options=dict(INT8_EXTRA_OPTIONS), calibration_cache_path=str(cache),
        )


def _fp16_remainder(path: Path) -> None:
    """Convert what is left in float32 (activations between Q/DQ pairs, scales, biases) to FP16, I/O kept."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(path))
    with _quiet():
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(path))


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


__all__ = ["PrecisionResult", "CalibrationReport", "convert_fp16", "quantize_int8", "compare_models", "read_source"]
