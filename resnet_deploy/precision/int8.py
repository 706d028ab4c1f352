"""Calibrated INT8: explicit Q/DQ from ONNX Runtime's static quantization (see `precision/__init__`)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.gates import build_gate_for, judge
from resnet_deploy.metadata_keys import (
    CALIBRATION_KEY,
    FP16_REMAINDER_KEY,
    MIXED_PRECISION_KEY,
    QUANTIZATION_KEY,
    SOURCE_ONNX_SHA256_KEY,
    VERIFICATION_KEY,
)
from resnet_deploy.onnx_check import arithmetic_session, run_logits
from resnet_deploy.precision.calibration import (
    DEFAULT_CHECK_SAMPLES,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    METHODS,
    CacheStatus,
    ProgressFn,
    calibration_batch,
    load_calibration_images,
    random_calibration_images,
)
from resnet_deploy.precision.common import (
    INT8_MIN_AGREEMENT,
    MIN_FP16_QDQ_OPSET,
    PRECISION_KEY,
    CalibrationReport,
    CheckSet,
    Judged,
    PrecisionResult,
    _enforce,
    _gate,
    _session,
    _verification,
    _version,
    drop_unused_opsets,
    judged,
    read_source,
    set_metadata,
)
from resnet_deploy.precision.mixed import DEFAULT_MAX_FALLBACK_LAYERS, search_mixed
from resnet_deploy.precision.qdq import Quantizer, activation_ranges, pre_process


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
    weight_bits: int | None = None,
    cpu_target: str | None = None,
    shown_as: str | Path | None = None,
) -> PrecisionResult:
    """A Q/DQ INT8 model of the FP32 `source_onnx`, calibrated on `calib_data` and checked against it.

    `method` is percentile (the default), entropy, minmax or auto (each method, scored on held-out images by
    top-1 agreement with FP32; the best is kept). Calibration caches live in the user's cache folder
    (`calibration.cache_folder()`), named by their key; `cache_base` is accepted and unused. Raises UsageError
    for bad input, CheckFailed (writing nothing) when the model misses the gate.

    `weight_bits` None: what `cpu_target` needs (None: this machine's class). 7 quantizes weights to [-64, 64]
    (ONNX Runtime's reduce_range), for CPUs whose u8×s8 integer kernels saturate (`isa.py`; `cpu_target` names
    the class, recorded in the metadata). Every check here judges the Q/DQ arithmetic (ONNX Runtime with graph
    optimizations off), which is what a correct kernel computes on any machine; the target then judges its own
    artifact on this CPU against the same images (`check_set`). With labelled check images (class subfolders
    named as the card's classes) the gate judges top-1 too.

    Mixed precision to a budget: when full INT8 misses the gate on the held-out images, the nodes are
    ranked by sensitivity (`sensitivity.py`, a continuous logit error) on one half of those images and the
    most sensitive are kept out of INT8 one at a time (FP32, or FP16 with `fp16_remainder`), re-checking after
    each, until the gate is met there or `max_fallback_layers` are out (0: strict full INT8, failing as
    before); the result is then confirmed on the other half, which the search never saw.
    """
    import onnx

    started = time.perf_counter()
    if method not in (*METHODS, "auto"):
        raise UsageError(f"--calib-method must be one of {', '.join(METHODS)} or auto, got {method!r}")
    if calib_data is None and not random_calibration:
        raise UsageError("INT8 needs calibration images: pass --calib-data DIR (any folder of images)")
    if max_fallback_layers < 0:
        raise UsageError(f"--max-fallback-layers must be 0 (strict full INT8) or more, got {max_fallback_layers}")
    if weight_bits is None:
        from resnet_deploy.precision.isa import this_cpu, weight_bits_for

        cpu_target = cpu_target or this_cpu().cpu_class
        weight_bits = weight_bits_for(cpu_target)
    if weight_bits not in (7, 8):
        raise UsageError(f"INT8 weights are 8 or 7 bits, got {weight_bits}")
    src = read_source(source_onnx)
    output = Path(output)
    named = Path(shown_as) if shown_as is not None else output  # what errors call the output: the user's path
    if fp16_remainder and src.opset < MIN_FP16_QDQ_OPSET:
        raise UsageError(f"{src.path}: opset {src.opset}; INT8 with an FP16 remainder needs FP16 Q/DQ scales, "
                         f"which need opset {MIN_FP16_QDQ_OPSET} or newer: re-export with --opset 20")
    pre = src.card.preprocessing
    if random_calibration:
        calib = random_calibration_images(pre, samples=samples, seed=seed, check_samples=min(check_samples, 64))
    else:
        assert calib_data is not None
        calib = load_calibration_images(calib_data, pre, samples=samples, check_samples=check_samples, seed=seed,
                                        progress=progress, class_names=src.card.class_names)
    batch, static = calibration_batch(src.input_shape, pre.input_size)
    methods = list(METHODS) if method == "auto" else [method]
    base = Path(cache_base) if cache_base is not None else output
    warnings: list[str] = []
    labels = calib.check_labels

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = tmp / "prepared.onnx"
        pre_process(src.path, prepared)
        reference = run_logits(_session(src.path), calib.check_images, batch=batch)
        if progress is not None:
            progress("check fp32", len(calib.check_images), len(calib.check_images))
        candidates: dict[str, tuple[Quantizer, Path, Judged, CacheStatus]] = {}
        for name in methods:
            ranges, status = activation_ranges(src, calib, name, prepared, base, batch, static, samples, progress)
            quantizer = Quantizer(prepared, ranges, name, tmp, fp16_remainder, weight_bits=weight_bits)
            quantized = quantizer.build([])
            arithmetic = run_logits(arithmetic_session(quantized), calib.check_images, batch=batch)
            check = judged(reference, arithmetic, labels)
            if progress is not None:
                progress(f"check {name}", len(calib.check_images), len(calib.check_images))
            candidates[name] = (quantizer, quantized, check, status)
        # The best method: finite first, then the smallest top-1 drop where labels tell it, then agreement.
        best = max(methods, key=lambda m: (candidates[m][2].comparison.finite,
                                           -(max(0.0, -(candidates[m][2].top1_delta or 0.0))),
                                           candidates[m][2].comparison.agreement,
                                           -candidates[m][2].comparison.max_abs_logit_diff))
        best_quantizer, best_path, check, _ = candidates[best]
        comparison = check.comparison
        data = "random" if calib.random else ("held-out images" if calib.check_held_out else "calibration images")
        gate = _gate(min_agreement, INT8_MIN_AGREEMENT, src, data)
        policy = build_gate_for("int8", min_agreement=min_agreement, labelled=check.top1_delta is not None)
        mixed = None
        if gate is not None and comparison.finite and max_fallback_layers > 0 \
                and not judge(policy, agreement=comparison.agreement,
                              top1_delta=check.gated_delta(policy.max_top1_drop)[0]).passed:
            mixed = search_mixed(best_quantizer, src, reference, calib.check_images, comparison, policy,
                                 max_fallback_layers=max_fallback_layers, batch=batch, progress=progress,
                                 labels=labels)
            if not mixed.passed:
                raise CheckFailed(f"{named}: {mixed.failure}; nothing was written. {int8_remedies(method, src.path)}")
            best_path = mixed.path
            arithmetic = run_logits(arithmetic_session(best_path), calib.check_images, batch=batch)
            check, comparison = judged(reference, arithmetic, labels), mixed.confirmation
        else:
            arithmetic = run_logits(arithmetic_session(best_path), calib.check_images, batch=batch)
        _enforce(check if mixed is None else Judged(comparison), gate, f"INT8 ({best})", named,
                 int8_remedies(method, src.path, candidates={m: c[2] for m, c in candidates.items()}),
                 override=min_agreement)
        report = CalibrationReport(
            requested=method, method=best, samples=len(calib.images), seed=seed, data=calib.source,
            set_sha256=calib.sha256, random=calib.random,
            scores={m: {**candidates[m][2].to_dict(), "cache": candidates[m][3].to_dict()} for m in methods},
        )
        model = onnx.load(str(best_path))
        props = dict(src.props)
        weights = ("int8 in 7 bits ([-64, 64]: u8×s8 kernels without VNNI cannot saturate)" if weight_bits == 7
                   else "int8")
        props.update({
            PRECISION_KEY: "int8",
            FP16_REMAINDER_KEY: "true" if fp16_remainder else "false",
            SOURCE_ONNX_SHA256_KEY: src.sha256,
            QUANTIZATION_KEY: json.dumps({
                "format": "QDQ", "weights": f"{weights}, per-channel (output channel), symmetric",
                "weight_bits": weight_bits, "cpu_target": cpu_target,
                "activations": "int8, per-tensor, symmetric (zero point 0)", "bias": "float",
                "remainder": "fp16" if fp16_remainder else "fp32", "tool": f"onnxruntime {_version('onnxruntime')}",
                "float_by_rule": [node.to_dict() for node in best_quantizer.float_nodes],
            }),
            CALIBRATION_KEY: json.dumps(_calibration_prop(report)),
            VERIFICATION_KEY: json.dumps({**_verification(comparison, data), **(
                {k: v for k, v in check.to_dict().items() if k in ("agreement_ci", "reference_top1", "top1",
                                                                      "top1_delta")})}),
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
        judged=check, weight_bits=weight_bits, cpu_target=cpu_target,
        check_set=CheckSet(calib.check_images, labels, reference, arithmetic, data),
    )


def int8_remedies(method: str, source: Path, candidates: dict[str, Judged] | None = None) -> str:
    """What to try next, without suggesting what was just done; fine-tuning is the way past calibration's ceiling."""
    tips = []
    if candidates is not None and len(candidates) > 1:
        scores = ", ".join(f"{m} {c.comparison.agreement:.2f}%" for m, c in candidates.items())
        tips.append(f"--calib-method auto compared the methods ({scores})")
    elif method != "auto":
        tips.append("try --calib-method auto (all methods, the best kept)")
    tips.append("--max-fallback-layers N keeps the most sensitive layers in float")
    tips.append(f"quantization-aware fine-tuning goes past what calibration reaches: resnet-deploy finetune-int8 "
                f"CARD --data DIR (the model card {source.name} was exported from)")
    tips.append("or lower --min-agreement if this difference is acceptable")
    return "; ".join(tips) + "."


def _calibration_prop(report: CalibrationReport) -> dict[str, Any]:
    """The calibration as recorded in the model: method, data, set hash and each method's score."""
    data = report.to_dict()
    data["scores"] = {method: {"agreement": score["agreement"], "max_abs_logit_diff": score["max_abs_logit_diff"]}
                      for method, score in report.scores.items()}
    return data
