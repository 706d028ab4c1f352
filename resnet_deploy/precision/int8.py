"""Calibrated INT8: explicit Q/DQ from ONNX Runtime's static quantization (see `precision/__init__`)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from resnet_deploy.artifacts import (
    CALIBRATION_KEY,
    FP16_REMAINDER_KEY,
    MIXED_PRECISION_KEY,
    QUANTIZATION_KEY,
    SOURCE_ONNX_SHA256_KEY,
    VERIFICATION_KEY,
)
from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.compare import LogitComparison, compare_logits
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.gates import build_gate_for, judge
from resnet_deploy.onnx_check import run_logits
from resnet_deploy.precision.calibration import (
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
from resnet_deploy.precision.common import (
    INT8_EXTRA_OPTIONS,
    INT8_MIN_AGREEMENT,
    MIN_FP16_QDQ_OPSET,
    PRECISION_KEY,
    CalibrationReport,
    PrecisionResult,
    _enforce,
    _gate,
    _quiet,
    _session,
    _Source,
    _verification,
    _version,
    drop_unused_opsets,
    read_source,
    set_metadata,
)
from resnet_deploy.precision.mixed import DEFAULT_MAX_FALLBACK_LAYERS, Quantizer, search_mixed


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
    max_fallback_layers: int = DEFAULT_MAX_FALLBACK_LAYERS,
    progress: ProgressFn | None = None,
) -> PrecisionResult:
    """A Q/DQ INT8 model of the FP32 `source_onnx`, calibrated on `calib_data` and checked against it.

    `method` is percentile (the default), entropy, minmax or auto (each method, scored on held-out
    images by top-1 agreement with FP32; the best is kept). Calibration caches live beside `cache_base` (default
    `output`) as `<name>.calib-<method>.json`. Raises UsageError for bad input, CheckFailed (writing
    nothing) when the model misses the agreement gate.

    Mixed precision to a budget: when full INT8 misses the gate on the held-out images, the nodes are
    ranked by sensitivity (`sensitivity.py`) on one half of those images and the most sensitive are kept
    out of INT8 one at a time (FP32, or FP16 with `fp16_remainder`), re-checking after each, until the
    gate is met there or `max_fallback_layers` are out (0: strict full INT8, failing as before); the
    result is then confirmed on the other half, which the search never saw.
    """
    import onnx

    started = time.perf_counter()
    if method not in (*METHODS, "auto"):
        raise UsageError(f"--calib-method must be one of {', '.join(METHODS)} or auto, got {method!r}")
    if calib_data is None and not random_calibration:
        raise UsageError("INT8 needs calibration images: pass --calib-data DIR (any folder of images)")
    if max_fallback_layers < 0:
        raise UsageError(f"--max-fallback-layers must be 0 (strict full INT8) or more, got {max_fallback_layers}")
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
        candidates: dict[str, tuple[Quantizer, Path, LogitComparison, CacheStatus]] = {}
        for name in methods:
            ranges, status = _ranges(src, calib, name, prepared, base, batch, static, samples, progress)
            quantizer = Quantizer(prepared, ranges, name, tmp, fp16_remainder)
            quantized = quantizer.build([])
            comparison = compare_logits(reference, run_logits(_session(quantized), calib.check_images, batch=batch))
            if progress is not None:
                progress(f"check {name}", len(calib.check_images), len(calib.check_images))
            candidates[name] = (quantizer, quantized, comparison, status)
        best = max(methods, key=lambda m: (candidates[m][2].finite, candidates[m][2].agreement,
                                           -candidates[m][2].max_abs_logit_diff))
        best_quantizer, best_path, comparison, _ = candidates[best]
        data = "random" if calib.random else ("held-out images" if calib.check_held_out else "calibration images")
        gate = _gate(min_agreement, INT8_MIN_AGREEMENT, src, data)
        policy = build_gate_for("int8", min_agreement=min_agreement)
        mixed = None
        if gate is not None and comparison.finite and max_fallback_layers > 0 \
                and not judge(policy, agreement=comparison.agreement).passed:
            mixed = search_mixed(best_quantizer, src, reference, calib.check_images, comparison, policy,
                                 max_fallback_layers=max_fallback_layers, batch=batch, progress=progress)
            if not mixed.passed:
                raise CheckFailed(f"{output}: {mixed.failure}; nothing was written. Try --calib-method auto, "
                                  "a larger --max-fallback-layers, or lower --min-agreement if this difference is "
                                  "acceptable.")
            best_path, comparison = mixed.path, mixed.confirmation
        _enforce(comparison, gate, f"INT8 ({best})", output, "Try --calib-method auto (or another method), "
                 "more --calib-samples, --max-fallback-layers N (mixed precision), or lower --min-agreement if this "
                 "difference is acceptable.", override=min_agreement)
        report = CalibrationReport(
            requested=method, method=best, samples=len(calib.images), seed=seed, data=calib.source,
            set_sha256=calib.sha256, random=calib.random,
            scores={m: {**candidates[m][2].to_dict(), "cache": candidates[m][3].to_dict()} for m in methods},
        )
        model = onnx.load(str(best_path))
        props = dict(src.props)
        props.update({
            PRECISION_KEY: "int8",
            FP16_REMAINDER_KEY: "true" if fp16_remainder else "false",
            SOURCE_ONNX_SHA256_KEY: src.sha256,
            QUANTIZATION_KEY: json.dumps({
                "format": "QDQ", "weights": "int8, per-channel (output channel), symmetric",
                "activations": "int8, per-tensor, symmetric (zero point 0)", "bias": "float",
                "remainder": "fp16" if fp16_remainder else "fp32", "tool": f"onnxruntime {_version('onnxruntime')}",
                "float_by_rule": [node.to_dict() for node in best_quantizer.float_nodes],
            }),
            CALIBRATION_KEY: json.dumps(_calibration_prop(report)),
            VERIFICATION_KEY: json.dumps(_verification(comparison, data)),
        })
        if mixed is not None:
            props[MIXED_PRECISION_KEY] = json.dumps(mixed.to_dict())
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
        warnings=warnings, gate_override=min_agreement, mixed=mixed, float_by_rule=best_quantizer.float_nodes,
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


def _quantize(prepared: Path, output: Path, ranges: dict[str, Any], method: str, tmp: Path,
              exclude: list[str] | None = None, op_types: list[str] | None = None) -> None:
    """`op_types` None: every op ONNX Runtime can quantize (its default)."""
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
            nodes_to_exclude=list(exclude or []), op_types_to_quantize=op_types,
        )


def _fp16_remainder(path: Path) -> None:
    """Convert what is left in float32 (activations between Q/DQ pairs, scales, biases) to FP16, I/O kept."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(path))
    with _quiet():
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(path))


