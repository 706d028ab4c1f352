"""The runner contract every backend meets (after Polygraphy's `BaseRunner`, without its size).

An engine is opened on an artifact, takes a float32 NCHW batch as a numpy array and returns the
logits as a float32 numpy array. It is a context manager; `close()` frees its resources.

What `bench` needs is part of the contract, so timing code never looks behind it:
`prepare_run(batch, copy_free=...)` binds one batch once and returns a `PreparedRun`, whose call
runs the engine once, waits for the device (`synchronize`) and returns the latency in ms. By
default a run is the whole `infer` (host arrays in and out). With `copy_free=True` a backend that
can runs on pre-bound inputs and outputs instead (PyTorch: a preallocated device tensor; ONNX
Runtime: IOBinding; OpenVINO: an input tensor set on its own infer request; TensorRT: its device
buffers); `PreparedRun.copies` says which path was taken.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class EngineError(Exception):
    """A known engine failure; `exit_code` follows DESIGN.md (2: bad input or missing backend)."""

    exit_code = 1


class ModelLoadError(EngineError):
    """The runtime refused the model file itself (a cycle, an unknown opset, a broken graph): bad input."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (runtimes' run to pages), else its type's name.
    The one such helper of engines and resnet_deploy (`resnet_deploy.errors` re-exports it)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class EngineInputError(EngineError, ValueError):
    """The batch has the wrong shape or dtype for this engine."""

    exit_code = 2


class BackendUnavailableError(EngineError):
    """The backend's library, or the device it needs, is not available here."""

    exit_code = 2


@dataclass(frozen=True)
class TensorInfo:
    """A named I/O tensor; dynamic dimensions are ``None``."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    def describe(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class PreparedRun:
    """One batch bound to an engine for repeated timing. Calling it runs once, device-synchronized, and
    returns the latency in milliseconds."""

    timed_call: Callable[[], float]
    copies: str  # "included": host arrays in and out; "excluded": inputs and outputs pre-bound
    timer: str = "host"  # "host" (wall clock around a synchronized call) or "cuda-events"
    keep: tuple[Any, ...] = ()  # buffers the bound run reads without owning them: alive as long as the run
    # The host array every call reads in place (CPU runs that share it, no cast): write the next batch into it
    # to run on new data without a copy of the engine's own (LoadGen's SingleStream). None: the run reads a
    # copy made when it was bound (a GPU, a cast to bf16), so new data needs `infer`.
    input: np.ndarray | None = None

    def __call__(self) -> float:
        return self.timed_call()


def host_timed(run: Callable[[], Any], synchronize: Callable[[], None]) -> Callable[[], float]:
    """`run` then `synchronize`, timed on the host's monotonic clock, in ms."""
    clock = time.perf_counter_ns

    def timed_call() -> float:
        start = clock()
        run()
        synchronize()
        return (clock() - start) / 1e6

    return timed_call


class Engine(ABC):
    """One inference runtime on one artifact."""

    #: backend name: "torch", "onnxruntime", "tensorrt", "openvino"
    name: str = "base"

    def __init__(self, *, precision: str, device: str) -> None:
        self.precision = precision  # the precision that actually runs: fp32, fp16, bf16, int8
        self.device = device  # "cpu", "cuda", "cuda:1", ...
        self._closed = False

    # Each backend sets `_input` and `_output` when it opens its artifact.
    _input: TensorInfo
    _output: TensorInfo

    @property
    def input(self) -> TensorInfo:
        return self._input

    @property
    def output(self) -> TensorInfo:
        return self._output

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a validated batch; return float32 logits of shape (N, classes)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise EngineError(f"{self.name} engine is closed")
        self.check_input(batch)
        return self._infer(batch)

    def check_input(self, batch: np.ndarray) -> None:
        """Reject a wrong rank, channel/spatial size or dtype with a message that says what was expected."""
        expected = self.input
        if not isinstance(batch, np.ndarray):
            raise EngineInputError(f"expected a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise EngineInputError(f"input {expected.name!r} expects float32, got {batch.dtype}")
        if batch.ndim != len(expected.shape):
            raise EngineInputError(
                f"input {expected.name!r} expects shape {expected.describe()}, got {tuple(batch.shape)}"
            )
        for actual, want in zip(batch.shape, expected.shape, strict=True):
            if want is not None and actual != want:
                raise EngineInputError(
                    f"input {expected.name!r} expects shape {expected.describe()}, got {tuple(batch.shape)}"
                )
        if batch.shape[0] < 1:
            raise EngineInputError("empty batch")

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op for synchronous backends); used by timing code."""

    def prepare_run(self, batch: np.ndarray, *, copy_free: bool = False) -> PreparedRun:
        """Bind `batch` once for repeated timed runs (see the module docstring); a bad batch raises here."""
        if self._closed:
            raise EngineError(f"{self.name} engine is closed")
        self.check_input(batch)
        if copy_free:
            bound = self._copy_free_run(batch)
            if bound is not None:
                return bound
        return PreparedRun(host_timed(lambda: self.infer(batch), self.synchronize), copies="included")

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun | None:
        """A run on pre-bound inputs/outputs, or None where the backend has no such path (the default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Backend details worth recording next to a result (providers, threads, library version)."""
        return {"backend": self.name, "precision": self.precision, "device": self.device}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
