"""ONNX Runtime: CPU here, CUDA and TensorRT execution providers where present.

All graph optimizations on; the provider order and the intra-op thread count are configurable.
The precision is read from the graph (FP16 initializers, QuantizeLinear nodes), so an FP16 or
INT8 model is never reported as FP32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    ModelLoadError,
    PreparedRun,
    TensorInfo,
    first_line,
    host_timed,
)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


# Graph optimization levels by name. "disable": the graph exactly as written; for a Q/DQ model that is the
# quantization arithmetic itself, the same on every CPU (the reference this machine's integer kernels are judged by).
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def create_session(model: str | Path | bytes, *, level: str = "all", providers: list[str] | None = None,
                   threads: int | None = None, optimized_path: str | Path | None = None,
                   shown_as: str | Path | None = None) -> Any:
    """The one place an ONNX Runtime session is made (this engine, the library's build checks, graph cleaning):
    log kept to errors, CPU unless `providers` say otherwise. `optimized_path`: ORT also writes the graph it
    optimized there. A model ORT refuses is a ModelLoadError naming `shown_as` (else the path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: provider fallbacks stay off the user's terminal
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile)
        name = shown_as or ("the model" if isinstance(model, bytes) else model)
        raise ModelLoadError(f"{name}: ONNX Runtime cannot load this model ({first_line(exc)})") from None


def default_providers(device: str) -> list[str]:
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def graph_precision(path: Path) -> str:
    """int8 if the graph quantizes, fp16 if its float weights are half, else fp32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops or "QLinearConv" in ops:
        return "int8"
    float_types = [init.data_type for init in model.graph.initializer
                   if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    if float_types and sum(t == onnx.TensorProto.FLOAT16 for t in float_types) > len(float_types) / 2:
        return "fp16"
    return "fp32"


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        providers: list[str] | None = None,
        threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"ONNX Runtime is not installed ({exc}); pip install onnxruntime") from None
        self.path = Path(path)
        wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or default_providers(device))]
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {', '.join(missing)} not available here (available: {', '.join(available)})"
            )
        self._session = create_session(self.path, providers=wanted, threads=threads)
        super().__init__(precision=precision or graph_precision(self.path), device=device)
        self.providers = self._session.get_providers()
        self.threads = threads
        self._ort = ort
        inp = self._session.get_inputs()[0]
        out = self._session.get_outputs()[0]
        self._input = TensorInfo(inp.name, _dims(inp.shape), _ORT_DTYPES.get(inp.type, inp.type))
        self._output = TensorInfo(out.name, _dims(out.shape), _ORT_DTYPES.get(out.type, out.type))
        if self._input.dtype != "float32":
            raise EngineError(f"{self.path}: input {inp.name!r} is {inp.type}; expected float32 input")
        self._output_names = [out.name]

    @property
    def session(self) -> Any:
        return self._session

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run(self._output_names, {self._input.name: batch})
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun:
        """Input and output bound once with IOBinding (on the GPU for a CUDA device); `run_with_iobinding`
        synchronizes its stream before returning."""
        device, index = ("cuda", int(self.device.split(":")[1]) if ":" in self.device else 0) \
            if self.device.startswith("cuda") else ("cpu", 0)
        session, binding = self._session, self._session.io_binding()
        staged = np.ascontiguousarray(batch)
        value = self._ort.OrtValue.ortvalue_from_numpy(staged, device, index)
        binding.bind_ortvalue_input(self._input.name, value)
        binding.bind_output(self._output.name, device, index)
        return PreparedRun(host_timed(lambda: session.run_with_iobinding(binding), self.synchronize),
                           copies="excluded", keep=(staged, value),  # on the CPU the input shares staged's memory
                           input=staged if device == "cpu" else None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "onnxruntime": self._ort.__version__, "providers": self.providers,
                "threads": self.threads}

    def close(self) -> None:
        self._session = None
        super().close()


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
