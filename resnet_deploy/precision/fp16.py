"""FP16: an FP16-typed ONNX model with float32 I/O, checked against its FP32 source (see `precision/__init__`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.compare import compare_logits
from resnet_deploy.metadata_keys import FP16_KEY, SOURCE_ONNX_SHA256_KEY, VERIFICATION_KEY
from resnet_deploy.onnx_check import activation_maxima, run_logits
from resnet_deploy.precision.common import (
    FP16_CONVERTER_CLIP,
    FP16_MIN_AGREEMENT,
    FP16_SAFE_MAX,
    PRECISION_KEY,
    PrecisionResult,
    _check_images_or_random,
    _enforce,
    _gate,
    _quiet,
    _session,
    _verification,
    _version,
    read_source,
    set_metadata,
)

# Kept in FP32 in every FP16 model. LayerNorm's mean and variance over a wide row lose precision and can
# overflow in FP16 (TensorRT warns of the same), and onnxruntime 1.31.1 crashes (SIGSEGV) opening an FP16
# ViT with FP16 LayerNormalization at its default optimization level. A ResNet has none.
FP32_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "GroupNormalization")


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
        model16 = float16.convert_float_to_float16(src.model, keep_io_types=True, node_block_list=blocked or None,
                                                   op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    props = dict(src.props)
    props.update({
        PRECISION_KEY: "fp16",
        SOURCE_ONNX_SHA256_KEY: src.sha256,
        FP16_KEY: json.dumps({"converter": f"onnxconverter-common {_version('onnxconverter-common')}",
                                          "io": "float32", "fp32_nodes": blocked, "fp32_ops": list(FP32_OPS)}),
    })
    with atomic_path(output) as tmp:
        import onnx

        set_metadata(model16, props)
        onnx.save(model16, str(tmp))
        if reference is None:
            reference = run_logits(_session(src.path), images, batch=batch)
        comparison = compare_logits(reference, run_logits(_session(tmp), images, batch=batch))
        gate = _gate(min_agreement, FP16_MIN_AGREEMENT, src, data)
        _enforce(comparison, gate, "FP16", output, "Lower --min-agreement if this difference is acceptable.",
                 precision="fp16", override=min_agreement)
        # Record the check in the file itself, then write again (the check ran on these exact weights).
        props[VERIFICATION_KEY] = json.dumps(_verification(comparison, data))
        set_metadata(model16, props)
        onnx.save(model16, str(tmp))
    if not comparison.finite:
        warnings.append("the FP16 model produces inf/NaN logits on the check inputs (random weights overflow FP16)")
    return PrecisionResult(
        path=output, precision="fp16", fp16_remainder=False, source=src.path, source_sha256=src.sha256,
        sha256=sha256_file(output), agreement=comparison.agreement, max_abs_logit_diff=comparison.max_abs_logit_diff,
        mean_abs_logit_diff=comparison.mean_abs_logit_diff, check_images=comparison.images, check_data=data,
        gate=gate, gate_override=min_agreement, random_weights=src.random_weights, fp32_nodes=blocked,
        seconds=time.perf_counter() - started,
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


