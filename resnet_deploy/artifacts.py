"""Artifacts by suffix: which backend opens a file, and where its model card lives.

| suffix | backend | card |
| --- | --- | --- |
| .safetensors .pt .pth .th | PyTorch | the file itself (card or trainer checkpoint) |
| .onnx | ONNX Runtime | ONNX `metadata_props["resnet_deploy.card"]` |
| .xml | OpenVINO | manifest `<name>.json` beside it, key "card" |
| .plan .engine | TensorRT | manifest `<name>.json` beside it, key "card" |

A manifest is named after the whole artifact name (`model.fp16.plan` → `model.fp16.plan.json`), so
an ONNX model and the engine built from it never share one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.base import Engine
from resnet_deploy.card import ModelCard
from resnet_deploy.errors import UsageError

TORCH_SUFFIXES = (".safetensors", ".pt", ".pth", ".th")
ONNX_SUFFIXES = (".onnx",)
OPENVINO_SUFFIXES = (".xml",)
TENSORRT_SUFFIXES = (".plan", ".engine")
ONNX_CARD_KEY = "resnet_deploy.card"


def backend_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in OPENVINO_SUFFIXES:
        return "openvino"
    if suffix in TENSORRT_SUFFIXES:
        return "tensorrt"
    raise UsageError(
        f"{path}: unknown artifact type {suffix or '(no suffix)'}; expected .safetensors/.pt/.pth (PyTorch), "
        ".onnx (ONNX Runtime), .xml (OpenVINO IR) or .plan/.engine (TensorRT)"
    )


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable manifest ({exc})") from None


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{path}: not a readable ONNX model ({exc})") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def artifact_card(path: str | Path) -> ModelCard:
    """The model card of any artifact; an artifact without one is refused (nothing is guessed)."""
    artifact = Path(path)
    if not artifact.is_file():
        raise UsageError(f"{artifact}: no such file")
    backend = backend_for(artifact)
    if backend == "torch":
        from resnet_deploy.checkpoints import load_model

        return load_model(artifact).card
    if backend == "onnxruntime":
        text = onnx_metadata(artifact).get(ONNX_CARD_KEY)
        if text:
            return ModelCard.from_json(text)
        raise UsageError(
            f"{artifact}: the ONNX model carries no resnet-deploy model card in its metadata; "
            "export it with `resnet-deploy export` (or import its weights with `import-weights`)"
        )
    manifest = read_manifest(artifact)
    if manifest and isinstance(manifest.get("card"), dict):
        return ModelCard.from_dict(manifest["card"])
    raise UsageError(f"{artifact}: no manifest {manifest_path(artifact).name} with a model card beside it")


def open_engine(
    path: str | Path,
    *,
    device: str = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    providers: list[str] | None = None,
    channels_last: bool = False,
    include_copies: bool = True,
    cuda_graph: bool = False,
    performance_hint: str = "LATENCY",
) -> Engine:
    """Open an artifact with the backend its suffix names. `precision` applies to PyTorch (fp32/fp16/bf16)
    and OpenVINO (its inference precision); other backends run the precision their graph carries."""
    artifact = Path(path)
    if not artifact.is_file():
        raise UsageError(f"{artifact}: no such file")
    backend = backend_for(artifact)
    if backend == "torch":
        from engines.torch_engine import TorchEngine
        from resnet_deploy.checkpoints import load_model

        loaded = load_model(artifact)
        size = loaded.card.preprocessing.input_size
        return TorchEngine(loaded.model, input_shape=(3, size, size), num_classes=loaded.card.num_classes,
                           precision=precision or "fp32", device=device, channels_last=channels_last,
                           threads=threads)
    if backend == "onnxruntime":
        from engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(artifact, device=device, providers=providers, threads=threads)
    if backend == "tensorrt":
        from engines.tensorrt.engine import TensorRTEngine

        return TensorRTEngine(artifact, device=device if device.startswith("cuda") else "cuda",
                              include_copies=include_copies, cuda_graph=cuda_graph)
    from engines.openvino_engine import OpenVINOEngine

    return OpenVINOEngine(artifact, device=device, performance_hint=performance_hint,
                          inference_precision=precision, threads=threads)
