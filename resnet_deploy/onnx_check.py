"""ONNX Runtime sessions for the library (made by the engine's factory), and ONNX models run side by side.

Used at build time: an FP16 or INT8 model against its FP32 source, and an ONNX Runtime artifact
against the precision model it was optimized from. Also measures the largest magnitude each
intermediate tensor reaches, so an FP16 conversion can keep in FP32 what would overflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.compare import LogitComparison, compare_logits
from resnet_deploy.errors import UsageError
from resnet_deploy.samples import batches_of


def session(path: str | Path | bytes, *, level: str = "all", providers: list[str] | None = None,
            optimized_path: str | Path | None = None, shown_as: str | Path | None = None) -> Any:
    """An ONNX Runtime session from the engine's factory (`engines.onnxruntime_engine.create_session`, the one
    place sessions are made); a model it cannot load is a UsageError.

    `level`: disable | basic | extended | all. "disable" runs a Q/DQ model as written: the quantization
    arithmetic, the same on every CPU, the reference this machine's integer kernels are judged against.
    `optimized_path`: ORT also writes the graph it optimized there (ONNX format), as the ORT target saves it.
    `shown_as`: the name the error gives the model (a staged copy is better named by its source).
    """
    from engines.base import ModelLoadError
    from engines.onnxruntime_engine import create_session

    try:
        return create_session(path, level=level, providers=providers, optimized_path=optimized_path,
                              shown_as=shown_as)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None


def arithmetic_session(path: str | Path) -> Any:
    """A Q/DQ model exactly as written (graph optimizations off): the quantization arithmetic, the same on every
    CPU, rather than this machine's integer kernels (which the other levels fuse the Q/DQ pairs into)."""
    return session(path, level="disable")


def input_spec(sess: Any) -> tuple[str, int | None]:
    """(input name, static batch or None)."""
    inp = sess.get_inputs()[0]
    first = inp.shape[0] if inp.shape else None
    return inp.name, first if isinstance(first, int) and first > 0 else None


def run_logits(sess: Any, images: np.ndarray, *, batch: int | None = None) -> np.ndarray:
    """Logits (float32) for `images`, batch by batch (the model's static batch when it has one)."""
    name, static = input_spec(sess)
    size = static or batch or 16
    outputs = [sess.run(None, {name: chunk})[0] for chunk in batches_of(images, size, static=static is not None)]
    return np.concatenate(outputs)[: len(images)].astype(np.float32, copy=False)


def compare_models(reference: str | Path | Any, candidate: str | Path | Any, images: np.ndarray,
                   *, batch: int | None = None) -> LogitComparison:
    """`compare.compare_logits` of `candidate` against `reference` (paths or sessions) on the same images."""
    ref = reference if hasattr(reference, "run") else session(reference)
    cand = candidate if hasattr(candidate, "run") else session(candidate)
    return compare_logits(run_logits(ref, images, batch=batch), run_logits(cand, images, batch=batch))


def activation_maxima(model: Any, images: np.ndarray, *, batch: int) -> tuple[np.ndarray, dict[str, float]]:
    """Run an FP32 ModelProto exposing every float intermediate tensor; return (logits, max |value| per tensor)."""
    import copy
    import tempfile

    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    float_types = {vi.name for vi in inferred.graph.value_info
                   if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    existing = {o.name for o in model.graph.output}
    augmented = copy.deepcopy(model)
    names = [out for node in model.graph.node for out in node.output if out in float_types and out not in existing]
    for name in names:
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-fp16-") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(augmented, str(path))
        sess = session(path, level="basic")
        input_name, static = input_spec(sess)
        out_names = [o.name for o in sess.get_outputs()]
        maxima = dict.fromkeys(names, 0.0)
        logits = []
        for chunk in batches_of(images, static or batch, static=static is not None):
            values = dict(zip(out_names, sess.run(None, {input_name: chunk}), strict=True))
            logits.append(values[model.graph.output[0].name])
            for name in names:
                value = values[name]
                if value.size:
                    maxima[name] = max(maxima[name], float(np.nanmax(np.abs(value))))
    return np.concatenate(logits)[: len(images)].astype(np.float32, copy=False), maxima
