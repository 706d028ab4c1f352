"""PyTorch eager runtime: any `nn.Module` that maps NCHW float images to logits.

CPU or CUDA; fp32, fp16 or bf16 weights and activations (the input is cast inside, the logits
come back as float32); optional channels_last; eval mode and `torch.inference_mode`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.base import BackendUnavailableError, Engine, EngineError, PreparedRun, TensorInfo, host_timed

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        module: Any,
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        precision: str = "fp32",
        device: str = "cpu",
        channels_last: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch

        if precision not in _TORCH_DTYPES:
            raise EngineError(f"PyTorch engine precision must be one of {', '.join(_TORCH_DTYPES)}, got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA is not available to PyTorch on this machine (use --device cpu)")
        if precision == "fp16" and device == "cpu":
            # CPU fp16 convolutions are emulated and very slow; refuse instead of timing an emulation.
            raise EngineError("fp16 on the CPU is not supported by the PyTorch engine; use bf16 or fp32")
        super().__init__(precision=precision, device=device)
        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self._dtype = getattr(torch, _TORCH_DTYPES[precision])
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.channels_last = channels_last
        self._module = module.eval().to(device=device, dtype=self._dtype, memory_format=self._memory_format)
        self._input = TensorInfo("input", (None, *input_shape), "float32")
        self._output = TensorInfo("logits", (None, num_classes), "float32")

    @property
    def module(self) -> Any:
        return self._module

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            # torch.from_numpy refuses negative strides (x[:, ::-1]) and warns on read-only arrays: copy those.
            x = torch.from_numpy(np.require(batch, requirements=("C", "W"))).to(self.device, non_blocking=False)
            x = x.to(dtype=self._dtype, memory_format=self._memory_format)
            logits = self._module(x)
            return logits.float().cpu().numpy()

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun:
        """The batch preallocated on the device in the module's dtype and layout; on CUDA, timed with events."""
        torch, module = self._torch, self._module
        host = np.require(batch, requirements=("C", "W"))
        staged = torch.from_numpy(host).to(self.device)
        staged = staged.to(dtype=self._dtype, memory_format=self._memory_format)
        shared = host if staged.data_ptr() == host.ctypes.data else None  # no move, cast or relayout happened

        def run() -> None:
            with torch.inference_mode():
                module(staged)

        if not self.device.startswith("cuda"):
            return PreparedRun(host_timed(run, self.synchronize), copies="excluded", input=shared)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed_call() -> float:
            with torch.inference_mode():
                start.record()
                module(staged)
                end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return PreparedRun(timed_call, copies="excluded", timer="cuda-events")

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "torch": self._torch.__version__,
            "threads": self._torch.get_num_threads(),
            "channels_last": self.channels_last,
        }

    def close(self) -> None:
        self._module = None
        super().close()
