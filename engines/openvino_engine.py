"""OpenVINO: the CPU runtime (Intel GPUs too) for an ONNX model or a saved OpenVINO IR (.xml + .bin).

The precision reported is the one that really runs, read back from the compiled model's runtime
graph: "int8" when the convolutions run quantized (a Q/DQ model), else the floating-point type the
convolutions were compiled to. That matters because OpenVINO's CPU plugin silently defaults to bf16
on CPUs with AVX-512 BF16 or AMX unless told f32, so an "FP32" model opened with no hint runs bf16.

Inference precision: `None` keeps the hint stored in an IR built by resnet-deploy (rt_info key
`resnet_deploy/inference_precision`), else the device default; "f32"/"fp32", "bf16" and
"f16"/"fp16" set `INFERENCE_PRECISION_HINT` (a CPU without the type falls back, and the reported
precision says so); "int8" means "the graph's quantization" and sets no hint.

Batch: a dynamic batch is used as is. A static batch is compiled as exported (fastest for that
size); another batch size reshapes a copy to a dynamic batch and compiles it once, on first use.
With the THROUGHPUT hint a batch is split over the streams OpenVINO chose and run in parallel.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    EngineInputError,
    PreparedRun,
    TensorInfo,
    host_timed,
)

INSTALL_HINT = "OpenVINO is not installed (pip install 'resnet-deploy[openvino]')"
#: rt_info path where `build_openvino_ir` stores the inference precision an IR was built for.
RT_INFO_INFERENCE_PRECISION = ("resnet_deploy", "inference_precision")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# Requested precision → OpenVINO element type name (None: no hint).
_HINTS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16", "int8": None, "auto": None}
# Runtime precision of a compute layer → the engine's precision string.
_RUNTIME = {"i8": "int8", "u8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32"}
_COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"}
_OV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


class OpenVINOConfigError(EngineError):
    """A bad option (performance hint, precision): bad usage, exit 2."""

    exit_code = 2


def import_openvino() -> Any:
    """`import openvino`, or the one-line error naming the extra."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError(INSTALL_HINT) from None
    return openvino


@functools.cache
def shared_core() -> Any:
    """The process's one `ov.Core`, alive until exit.

    OpenVINO's CPU plugin installs its own alternate signal stack on the thread that loads it and, when
    its Core dies, unmaps it and puts back the stack it found. Cores that die in the order they were made
    (not the reverse) leave an unmapped stack installed; the next signal with a Python handler (SIGCHLD
    from a DataLoader worker or a subprocess, Ctrl-C) then crashes the process with SIGSEGV, or writes
    its frame into memory that was reused. One Core per process keeps that in order.
    """
    return import_openvino().Core()


def ov_message(exc: BaseException) -> str:
    """OpenVINO errors start with lines of "Exception from src/...cpp:NN:"; keep the first line that says something."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")]
    text = (useful or lines or [type(exc).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


def hint_type_name(precision: str | None) -> str | None:
    """"fp32"/"f32" → "f32", "bf16" → "bf16", "fp16"/"f16" → "f16"; None, "auto" and "int8" → None (no hint)."""
    if precision is None:
        return None
    key = precision.lower()
    if key not in _HINTS:
        raise OpenVINOConfigError(
            f"OpenVINO inference precision must be one of f32/fp32, bf16, f16/fp16 (or int8 for a quantized "
            f"model), got {precision!r}"
        )
    return _HINTS[key]


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        performance_hint: str = "LATENCY",
        inference_precision: str | None = None,
        threads: int | None = None,
    ) -> None:
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.path = Path(path)
        self._ov, self._props, self._hints = ov, props, hints
        hint = performance_hint.upper()
        if hint not in PERFORMANCE_HINTS:
            raise OpenVINOConfigError(
                f"OpenVINO performance hint must be LATENCY or THROUGHPUT, got {performance_hint!r}"
            )
        requested = hint_type_name(inference_precision)
        self._core = shared_core()
        self.ov_device = self._resolve_device(device)
        try:
            self._model = self._core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError for unreadable or unsupported files
            raise EngineError(f"{self.path}: OpenVINO cannot read this model ({ov_message(exc)})") from None
        if requested is None and inference_precision is None:
            requested = _stored_hint(self._model)
        self.requested_precision = requested
        self.performance_hint = hint
        if len(self._model.inputs) != 1 or len(self._model.outputs) != 1:
            raise EngineError(f"{self.path}: expected one input and one output, got {len(self._model.inputs)} "
                              f"and {len(self._model.outputs)}")
        self._config: dict[Any, Any] = {hints.performance_mode: getattr(hints.PerformanceMode, hint)}
        if requested is not None:
            self._config[hints.inference_precision] = getattr(ov.Type, requested)
        if threads is not None:
            self._config[props.inference_num_threads] = int(threads)
        self.threads = threads

        port = self._model.inputs[0]
        shape = port.get_partial_shape()
        dtype = port.get_element_type().get_type_name()
        if dtype != "f32":
            raise EngineError(f"{self.path}: input {port.get_any_name()!r} is {dtype}; expected float32 input")
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise EngineError(f"{self.path}: expected an NCHW input, got shape {shape}")
        dims = [d.get_length() if d.is_static else None for d in shape]
        self._static_batch = dims[0]
        self._compiled = {"as_built": self._compile(self._model)}
        first = self._compiled["as_built"]
        super().__init__(precision=self._runtime_precision(first), device=device)
        if self._static_batch is not None and self._reshapeable():
            dims[0] = None  # other batch sizes work: a dynamic copy is compiled on first use
        out = self._model.outputs[0]
        out_dims = out.get_partial_shape()
        self._input = TensorInfo(port.get_any_name(), tuple(dims), "float32")
        self._output = TensorInfo(out.get_any_name(), (None, *[d.get_length() if d.is_static else None
                                                                for d in list(out_dims)[1:]]), "float32")
        self._requests: dict[str, Any] = {}
        self._stream_requests: dict[str, list[Any]] = {}

    # -- setup ---------------------------------------------------------------------------------

    def _resolve_device(self, device: str) -> str:
        if device.lower().startswith("cuda"):
            raise BackendUnavailableError(
                f"OpenVINO does not run on {device}; it runs on the CPU (and Intel GPUs): use --device cpu"
            )
        name = device.upper()
        available = self._core.available_devices
        if name.split(".")[0].split(":")[0] not in {d.split(".")[0] for d in available} | {"AUTO", "HETERO", "MULTI"}:
            raise BackendUnavailableError(
                f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})"
            )
        return name

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, self.ov_device, self._config)
        except Exception as exc:
            raise EngineError(f"{self.path}: OpenVINO cannot compile this model for {self.ov_device} "
                              f"({ov_message(exc)})") from None

    def _dynamic_copy(self) -> Any:
        """The model with its batch dimension made dynamic (raises if the graph pins the batch)."""
        ov = self._ov
        model = self._model.clone()
        shape = model.inputs[0].get_partial_shape()
        shape[0] = ov.Dimension()
        model.reshape({model.inputs[0]: shape})
        return model

    def _reshapeable(self) -> bool:
        try:
            self._dynamic_copy()
        except Exception:  # a Reshape with a constant batch, for example
            return False
        return True

    def _runtime_precision(self, compiled: Any) -> str:
        """What the compute layers really run, by majority; falls back to the compiled hint."""
        counts: collections.Counter[str] = collections.Counter()
        try:
            for op in compiled.get_runtime_model().get_ordered_ops():
                info = op.get_rt_info()
                if "layerType" in info and "runtimePrecision" in info:
                    layer = info["layerType"].astype(str)
                    precision = info["runtimePrecision"].astype(str).lower()
                    if layer in _COMPUTE_LAYERS and precision in _RUNTIME:
                        counts[_RUNTIME[precision]] += 1
        except Exception:  # devices other than the CPU may not expose a runtime model
            counts.clear()
        if counts:
            return counts.most_common(1)[0][0]
        if any(op.get_type_name() == "FakeQuantize" for op in self._model.get_ordered_ops()):
            return "int8"
        return _RUNTIME.get(self.inference_precision_hint(compiled), "fp32")

    def inference_precision_hint(self, compiled: Any | None = None) -> str:
        """The inference precision the compiled model reports ("f32", "bf16", ...)."""
        compiled = compiled or self._compiled["as_built"]
        try:
            return compiled.get_property(self._hints.inference_precision).get_type_name()
        except Exception:
            return "unknown"

    # -- interface -----------------------------------------------------------------------------

    def _key_for(self, batch_size: int) -> str:
        """The compiled model for this batch size: as built when it fits, else the dynamic copy."""
        if self._static_batch is None or batch_size == self._static_batch:
            return "as_built"
        return self._dynamic_key(batch_size)

    def _dynamic_key(self, batch_size: int) -> str:
        if "dynamic" not in self._compiled:
            try:
                model = self._dynamic_copy()
            except Exception as exc:
                raise EngineInputError(
                    f"{self.path}: the model is fixed at batch {self._static_batch} and cannot be reshaped to "
                    f"batch {batch_size} ({ov_message(exc)}); export it with a dynamic batch"
                ) from None
            self._compiled["dynamic"] = self._compile(model)
        return "dynamic"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        if self.performance_hint == "THROUGHPUT":
            return self._infer_streams(batch)
        key = self._key_for(batch.shape[0])
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = self._compiled[key].create_infer_request()
        try:
            request.infer({0: batch}, share_inputs=True)
        except Exception as exc:
            raise EngineError(f"{self.path}: OpenVINO inference failed ({ov_message(exc)})") from None
        return _logits(request.get_output_tensor(0).data)  # copies: the request reuses its buffer

    def _infer_streams(self, batch: np.ndarray) -> np.ndarray:
        """Split the batch over the parallel infer requests OpenVINO recommends for its streams."""
        if self._static_batch is None:
            key, parts = "as_built", batch.shape[0]
        elif self._input.shape[0] is None:  # static but reshapeable: chunks of any size run the dynamic copy
            key, parts = self._dynamic_key(batch.shape[0]), batch.shape[0]
        else:  # pinned batch: one request for the whole batch
            key, parts = "as_built", 1
        requests = self._stream_requests.get(key)
        if requests is None:
            # Plain requests and wait(), not AsyncInferQueue: its Python callbacks need the GIL on
            # OpenVINO's threads, and destroying the queue can then deadlock.
            compiled = self._compiled[key]
            jobs = max(1, int(compiled.get_property(self._props.optimal_number_of_infer_requests)))
            requests = self._stream_requests[key] = [compiled.create_infer_request() for _ in range(jobs)]
        chunks = [c for c in np.array_split(batch, min(len(requests), parts)) if len(c)]
        try:
            for request, chunk in zip(requests, chunks, strict=False):
                request.start_async({0: chunk}, share_inputs=True)
            for request in requests[: len(chunks)]:
                request.wait()
        except Exception as exc:
            raise EngineError(f"{self.path}: OpenVINO inference failed ({ov_message(exc)})") from None
        return np.concatenate([_logits(r.get_output_tensor(0).data) for r in requests[: len(chunks)]], axis=0)

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun | None:
        """An infer request of its own with the batch set as its input tensor (shared, not copied); the
        output stays in the request's buffer. THROUGHPUT splits batches over requests: no such path."""
        if self.performance_hint == "THROUGHPUT":
            return None
        staged = np.ascontiguousarray(batch)
        request = self._static_compiled(staged.shape[0]).create_infer_request()
        request.set_input_tensor(self._ov.Tensor(staged, shared_memory=True))

        start, wait = request.start_async, request.wait

        def run() -> None:
            # start_async + wait, not infer(): infer() copies the outputs into a new dict on every call
            # (about 90 us, 1.5 % of a 6 ms INT8 ResNet-50 call); the output stays in the request's buffer.
            try:
                start()
                wait()
            except Exception as exc:
                raise EngineError(f"{self.path}: OpenVINO inference failed ({ov_message(exc)})") from None

        # keep: the shared input memory, and the request (its `latency` is OpenVINO's own timing of the last call)
        return PreparedRun(host_timed(run, self.synchronize), copies="excluded", keep=(staged, request),
                           input=staged)  # the request's input tensor shares staged's memory

    def _static_compiled(self, batch_size: int) -> Any:
        """The model compiled for exactly this batch size, as `benchmark_app -b N` runs it: on a dynamic batch
        OpenVINO's CPU plugin redoes shape work on every call (about 5 % at ResNet-50 INT8 batch 1). Falls back
        to the model that `infer` uses when the graph cannot be reshaped."""
        if self._static_batch == batch_size:
            return self._compiled["as_built"]
        key = f"static-{batch_size}"
        if key not in self._compiled:
            try:
                model = self._model.clone()
                shape = model.inputs[0].get_partial_shape()
                shape[0] = self._ov.Dimension(batch_size)
                model.reshape({model.inputs[0]: shape})
            except Exception:  # a graph that pins its batch
                return self._compiled[self._key_for(batch_size)]
            self._compiled[key] = self._compile(model)
        return self._compiled[key]

    def describe(self) -> dict[str, Any]:
        compiled = self._compiled.get("as_built")
        info: dict[str, Any] = {**super().describe(), "openvino": self._ov.get_version(),
                                "ov_device": self.ov_device, "performance_hint": self.performance_hint,
                                "requested_precision": self.requested_precision}
        if compiled is not None:
            info["inference_precision"] = self.inference_precision_hint(compiled)
            for key, prop in (("threads", self._props.inference_num_threads), ("streams", self._props.streams.num)):
                try:
                    info[key] = int(compiled.get_property(prop))
                except Exception:
                    info[key] = self.threads if key == "threads" else None
        with contextlib.suppress(Exception):
            info["device_name"] = self._core.get_property(self.ov_device, self._props.device.full_name)
        return info

    def close(self) -> None:
        self._stream_requests.clear()
        self._requests.clear()
        self._compiled.clear()
        super().close()


def _stored_hint(model: Any) -> str | None:
    """The inference precision an IR built by resnet-deploy asks for (None when absent)."""
    try:
        if model.has_rt_info(list(RT_INFO_INFERENCE_PRECISION)):
            value = model.get_rt_info(list(RT_INFO_INFERENCE_PRECISION)).astype(str)
            return hint_type_name(value)
    except Exception:  # an IR from elsewhere, or a malformed value: use the device default
        return None
    return None


def _logits(data: np.ndarray) -> np.ndarray:
    return np.array(data, dtype=np.float32, copy=True)
