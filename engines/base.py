"""The runner contract every backend meets (after Polygraphy's `BaseRunner`, without its size).

An engine is opened on an artifact, takes a float32 NCHW batch as a numpy array and returns the
logits as a float32 numpy array. It is a context manager; `close()` frees its resources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class EngineError(Exception):
    """A known engine failure; `exit_code` follows DESIGN.md (2: bad input or missing backend)."""

    exit_code = 1


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

    def describe(self) -> dict[str, Any]:
        """Backend details worth recording next to a result (providers, threads, library version)."""
        return {"backend": self.name, "precision": self.precision, "device": self.device}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
