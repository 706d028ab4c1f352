"""How each declared backend opens an artifact (`Backend.opener`): `(path, OpenOptions) -> Engine`.

Only engine construction lives here; `registry.open_engine` checks the file first and runs the
self-check of CPU-verified artifacts after. A backend without an opener gets `Engine(path, device=, threads=)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engines.base import Engine
    from resnet_deploy.registry import OpenOptions


def open_torch(path: Path, options: OpenOptions) -> Engine:
    from engines.torch_engine import TorchEngine
    from resnet_deploy.checkpoints import load_model

    loaded = load_model(path)
    size = loaded.card.preprocessing.input_size
    return TorchEngine(loaded.model, input_shape=(3, size, size), num_classes=loaded.card.num_classes,
                       precision=options.precision or "fp32", device=options.device,
                       channels_last=options.channels_last, threads=options.threads)


def open_onnxruntime(path: Path, options: OpenOptions) -> Engine:
    from engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(path, device=options.device, providers=options.providers, threads=options.threads)


def open_openvino(path: Path, options: OpenOptions) -> Engine:
    from engines.openvino_engine import OpenVINOEngine

    return OpenVINOEngine(path, device=options.device, performance_hint=options.performance_hint,
                          inference_precision=options.precision, threads=options.threads)


def open_tensorrt(path: Path, options: OpenOptions) -> Engine:
    from engines.tensorrt.engine import TensorRTEngine

    device = options.device if options.device.startswith("cuda") else "cuda"
    return TensorRTEngine(path, device=device, include_copies=options.include_copies,
                          cuda_graph=options.cuda_graph)
