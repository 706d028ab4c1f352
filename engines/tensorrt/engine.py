"""TensorRT runtime: a plan built by `resnet-deploy build-engine --target tensorrt`, behind the engine interface.

Before deserializing, the plan's manifest (`<plan>.json`) and header are compared with the installed
TensorRT and the GPU, and a stale plan is refused with a message saying what to rebuild. Execution
uses the named-tensor API (`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `set_input_shape`,
`infer_shapes`, `set_tensor_address`, `execute_async_v3`) on a non-default CUDA stream; every bool it
returns is checked. Device buffers are torch CUDA tensors (no pycuda); host staging buffers are pinned.

For `bench`: with `include_copies=True` (the default) a timed call is the whole `infer` (host→device
copy, execution, device→host copy). With `include_copies=False`, `timed_call(batch)` copies the batch
to the GPU once and times the execution only; `prepare` / `run_prepared` / `fetch` expose the same
steps. `cuda_graph=True` captures the execution for a fixed batch shape as a CUDA graph (after one
plain run) and replays it while that shape stays; a new batch size re-captures (so keep the batch size
fixed when timing with graphs). If capture fails the engine falls back to plain execution and says
why in `describe()`.

Pages followed:
* Python API, ICudaEngine / IExecutionContext / Runtime (10.x "latest" and 11.4):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/ExecutionContext.html
* 10.x → 11.x runtime changes (e.g. `device_memory_size` → `_v2`):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
* CUDA graphs with `enqueueV3` (run once before capture; capture on an explicit stream), Advanced Topics:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html
* Version / hardware compatibility of plans: see `engines/tensorrt/manifest.py`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine, EngineError, EngineInputError, PreparedRun, TensorInfo, host_timed
from engines.tensorrt.manifest import (
    ManifestError,
    RunningEnvironment,
    check_compatible,
    read_manifest,
    trusted_plan_version,
)
from engines.tensorrt.support import (
    device_index,
    enum_name,
    format_log_tail,
    load_tensorrt,
    make_logger,
    require_cuda_torch,
    torch_dtype_name,
)

MAX_CACHED_BATCH_SHAPES = 4  # buffers kept for this many batch sizes (validation's last batch is smaller)


@dataclass(eq=False)
class _Slot:
    """Device buffers (and pinned host staging) for one batch size."""

    batch: int
    device_input: Any
    device_output: Any
    output_f32: Any | None  # float32 device copy when the engine's output is not float32
    host_input: Any | None  # pinned
    host_output: Any | None  # pinned


@dataclass(eq=False)
class PreparedBatch:
    """A batch already on the GPU, in buffers of its own (for timing without copies)."""

    batch_size: int
    _slot: _Slot


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, plan_path: str | Path, *, device: str = "cuda", include_copies: bool = True,
                 cuda_graph: bool = False) -> None:
        self.path = Path(plan_path)
        trt = load_tensorrt()  # BackendUnavailableError naming the extra when absent
        torch = require_cuda_torch()  # BackendUnavailableError when there is no CUDA GPU
        try:
            index = device_index(device)
        except ValueError as exc:
            raise EngineInputError(str(exc)) from None
        if index >= torch.cuda.device_count():
            raise EngineInputError(f"no CUDA device {index}: this machine has {torch.cuda.device_count()}")
        if not self.path.is_file():
            raise EngineInputError(f"{self.path}: no such file")
        manifest = read_manifest(self.path)
        data = self.path.read_bytes()
        # An unreadable header (e.g. a version-compatible plan's, whose layout is unverified) falls back to the
        # manifest's version; a file that is no plan at all is then refused by deserialization below.
        plan_version = trusted_plan_version(data, manifest)
        if manifest.plan_sha256 and hashlib.sha256(data).hexdigest() != manifest.plan_sha256:
            raise ManifestError(f"{self.path}: its manifest describes another plan (sha256 differs); rebuild it "
                                "with `resnet-deploy build-engine --target tensorrt`")
        props = torch.cuda.get_device_properties(index)
        env = RunningEnvironment(trt.__version__, props.name, (props.major, props.minor))
        check_compatible(manifest, env, plan_path=self.path, plan_version=plan_version)

        super().__init__(precision=manifest.precision, device=f"cuda:{index}")
        self._trt, self._torch, self._index = trt, torch, index
        self.manifest = manifest
        self.include_copies = include_copies
        self.gpu_name = props.name
        self._logger = make_logger(trt)
        with torch.cuda.device(index):
            self._runtime = trt.Runtime(self._logger)
            if manifest.version_compatible:
                # Version-compatible plans embed a lean runtime; this plan comes with our own manifest.
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise EngineError(f"{self.path}: TensorRT could not deserialize the plan (not a TensorRT plan, or "
                                  f"one this TensorRT cannot load). {format_log_tail(self._logger.tail())}")
            self._discover_io()
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise EngineError(f"{self.path}: TensorRT could not create an execution context (out of GPU "
                                  f"memory?). {format_log_tail(self._logger.tail())}")
            self._stream = torch.cuda.Stream(device=index)  # never the default stream
        self._slots: OrderedDict[int, _Slot] = OrderedDict()
        self._active: _Slot | None = None
        self._graph: Any | None = None
        self._graph_slot: _Slot | None = None
        self._use_graph = cuda_graph
        self.cuda_graph_fallback: str | None = None

    # ---------------------------------------------------------------------------------------------
    # I/O description

    def _discover_io(self) -> None:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineInputError(f"{self.path}: expected one input and one output tensor, got inputs {inputs} "
                                   f"and outputs {outputs}")
        self._in_name, self._out_name = inputs[0], outputs[0]
        self._in_dtype = self._torch_dtype(self._in_name)
        self._out_dtype = self._torch_dtype(self._out_name)
        if not self._in_dtype.is_floating_point or not self._out_dtype.is_floating_point:
            raise EngineInputError(f"{self.path}: expected floating-point input and output, got "
                                   f"{self._in_dtype} and {self._out_dtype}")
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(self._in_name))
        out_shape = tuple(int(d) for d in engine.get_tensor_shape(self._out_name))
        if in_shape[0] < 0:
            low, _, high = engine.get_tensor_profile_shape(self._in_name, 0)
            self._batch_range = (int(low[0]), int(high[0]))
        else:
            self._batch_range = (in_shape[0], in_shape[0])
        if any(d < 0 for d in in_shape[1:]):
            raise EngineInputError(f"{self.path}: only the batch dimension may be dynamic, got {list(in_shape)}")
        self._input = TensorInfo(self._in_name, tuple(None if d < 0 else d for d in in_shape), "float32")
        self._output = TensorInfo(self._out_name, tuple(None if d < 0 else d for d in out_shape), "float32")

    def _torch_dtype(self, name: str) -> Any:
        trt_name = enum_name(self._engine.get_tensor_dtype(name))
        try:
            return getattr(self._torch, torch_dtype_name(trt_name))
        except (ValueError, AttributeError) as exc:
            raise EngineInputError(f"{self.path}: tensor {name!r}: {exc}") from None

    @property
    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch this plan's optimization profile accepts."""
        return self._batch_range

    # ---------------------------------------------------------------------------------------------
    # Buffers and context state

    def _check_batch(self, n: int) -> None:
        low, high = self._batch_range
        if not low <= n <= high:
            raise EngineInputError(
                f"batch {n} is outside this engine's batch profile {low}..{high}; "
                f"use batches of {low}..{high} or rebuild with --min-batch/--max-batch"
            )

    def _new_slot(self, n: int, *, staging: bool) -> _Slot:
        torch, ctx = self._torch, self._context
        shape = (n, *self._input.shape[1:])
        if not ctx.set_input_shape(self._in_name, shape):
            raise EngineError(f"{self.path}: TensorRT refused input shape {shape}. "
                              f"{format_log_tail(self._logger.tail())}")
        # The context's shape changed: no slot is bound any more, and a captured graph (which froze the
        # old shape and context state) must be captured again.
        self._active = None
        self._graph, self._graph_slot = None, None
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out_name))
        if any(d < 0 for d in out_shape):
            raise EngineError(f"{self.path}: output shape {out_shape} is still unknown after setting the input")
        device = self.device
        device_input = torch.empty(shape, dtype=self._in_dtype, device=device)
        device_output = torch.empty(out_shape, dtype=self._out_dtype, device=device)
        output_f32 = None if self._out_dtype == torch.float32 else torch.empty(out_shape, dtype=torch.float32,
                                                                              device=device)
        host_input = torch.empty(shape, dtype=torch.float32, pin_memory=True) if staging else None
        host_output = torch.empty(out_shape, dtype=torch.float32, pin_memory=True) if staging else None
        return _Slot(n, device_input, device_output, output_f32, host_input, host_output)

    def _slot(self, n: int) -> _Slot:
        slot = self._slots.get(n)
        if slot is not None:
            self._slots.move_to_end(n)
            return slot
        if len(self._slots) >= MAX_CACHED_BATCH_SHAPES:
            _, old = self._slots.popitem(last=False)
            self._forget(old)
        slot = self._slots[n] = self._new_slot(n, staging=True)
        return slot

    def _forget(self, slot: _Slot) -> None:
        if self._active is slot:
            self._active = None
        if self._graph_slot is slot:
            self._graph, self._graph_slot = None, None

    def _activate(self, slot: _Slot) -> None:
        """Point the context at this slot's shape and buffers (skipped when it already is)."""
        if self._active is slot:
            return
        self._graph, self._graph_slot = None, None  # captured for another shape/context state
        ctx = self._context
        shape = tuple(slot.device_input.shape)
        if not ctx.set_input_shape(self._in_name, shape):
            raise EngineError(f"{self.path}: TensorRT refused input shape {shape}")
        try:
            unresolved = ctx.infer_shapes()
        except Exception as exc:  # the binding raises when shape inference itself fails
            raise EngineError(f"{self.path}: TensorRT shape inference failed for {shape}: {exc}") from None
        if unresolved:
            raise EngineError(f"{self.path}: tensors still without a shape: {', '.join(unresolved)}")
        for name, tensor in ((self._in_name, slot.device_input), (self._out_name, slot.device_output)):
            if not ctx.set_tensor_address(name, tensor.data_ptr()):
                raise EngineError(f"{self.path}: TensorRT refused the buffer address of {name!r}")
        self._active = slot

    # ---------------------------------------------------------------------------------------------
    # Execution

    def _enqueue(self, slot: _Slot) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise EngineError(f"{self.path}: TensorRT execute_async_v3 failed for batch {slot.batch}. "
                              f"{format_log_tail(self._logger.tail())}")

    def _execute(self, slot: _Slot) -> None:
        """Queue one execution on the stream (must be called inside the stream context)."""
        self._activate(slot)
        if self._use_graph:
            if self._graph_slot is not slot:
                self._capture(slot)
            if self._graph is not None:
                self._graph.replay()
                return
        self._enqueue(slot)

    def _capture(self, slot: _Slot) -> None:
        torch = self._torch
        self._graph, self._graph_slot = None, None
        self._enqueue(slot)  # one plain run first: TensorRT finishes shape-dependent setup outside the capture
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                if not self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                    raise EngineError("execute_async_v3 returned False during capture")
        except Exception as exc:  # capture unsupported for this engine: run without a graph
            self._use_graph = False
            self.cuda_graph_fallback = f"CUDA graph capture failed ({str(exc).splitlines()[0]}); running without"
            self._stream.synchronize()
            return
        self._graph, self._graph_slot = graph, slot

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        self._check_batch(n)
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            slot = self._slot(n)
            np.copyto(slot.host_input.numpy(), batch)
            slot.device_input.copy_(slot.host_input, non_blocking=True)
            self._execute(slot)
            self._copy_out(slot)
        self._stream.synchronize()
        return slot.host_output.numpy().copy()

    def _copy_out(self, slot: _Slot) -> None:
        source = slot.device_output
        if slot.output_f32 is not None:
            slot.output_f32.copy_(source)
            source = slot.output_f32
        slot.host_output.copy_(source, non_blocking=True)

    # ---------------------------------------------------------------------------------------------
    # Timing without host<->device copies (bench --no-copies)

    def prepare(self, batch: np.ndarray) -> PreparedBatch:
        """Copy `batch` to the GPU once, into buffers of its own; run it with `run_prepared`."""
        if self._closed:
            raise EngineError(f"{self.name} engine is closed")
        self.check_input(batch)
        n = batch.shape[0]
        self._check_batch(n)
        torch = self._torch
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            slot = self._new_slot(n, staging=True)
            slot.device_input.copy_(torch.from_numpy(np.ascontiguousarray(batch)))
        self._stream.synchronize()
        return PreparedBatch(n, slot)

    def run_prepared(self, prepared: PreparedBatch) -> None:
        """Execute on a device-resident batch and wait for the GPU; no copies are made."""
        torch = self._torch
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            self._execute(prepared._slot)
        self._stream.synchronize()

    def fetch(self, prepared: PreparedBatch) -> np.ndarray:
        """The float32 logits of the last `run_prepared` on this batch."""
        torch = self._torch
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            self._copy_out(prepared._slot)
        self._stream.synchronize()
        return prepared._slot.host_output.numpy().copy()

    def timed_call(self, batch: np.ndarray) -> Callable[[], None]:
        """What one timed iteration runs: `infer(batch)` with copies, the execution alone without."""
        if self.include_copies:
            return lambda: self.infer(batch)
        prepared = self.prepare(batch)
        return lambda: self.run_prepared(prepared)

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun:
        """The engine contract's copy-free path (bench): the batch in device buffers of its own, execution only."""
        prepared = self.prepare(batch)
        return PreparedRun(host_timed(lambda: self.run_prepared(prepared), self.synchronize), copies="excluded")

    # ---------------------------------------------------------------------------------------------

    def synchronize(self) -> None:
        if not self._closed:
            self._stream.synchronize()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "tensorrt": self._trt.__version__,
            "gpu": self.gpu_name,
            "plan": str(self.path),
            "batch_range": list(self._batch_range),
            "io_dtypes": {"input": str(self._in_dtype).replace("torch.", ""),
                          "output": str(self._out_dtype).replace("torch.", "")},
            "layer_precisions": dict(self.manifest.layer_precisions),
            "include_copies": self.include_copies,
            "cuda_graph": self._use_graph,
            "cuda_graph_fallback": self.cuda_graph_fallback,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._stream.synchronize()
        # Graph and buffers first, then context before engine before runtime (TensorRT's ownership order).
        self._graph = self._graph_slot = self._active = None
        self._slots.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        super().close()
