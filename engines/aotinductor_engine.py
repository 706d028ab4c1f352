"""PyTorch AOTInductor: a `.pt2` package compiled ahead of time, run without the Python model code.

The package (`torch._inductor.aoti_compile_and_package`) holds the compiled kernels as a shared
library and the weights; `torch._inductor.aoti_load_package` runs it. No model class, no
safetensors, no compiler is needed to run it, only PyTorch. The package carries string metadata
of its own (`aot_inductor.metadata` at compile time): the target writes the precision, the input
shape and the number of classes there, so this engine reads everything it needs from the one file,
and PyTorch adds the device the kernels were compiled for (`AOTI_DEVICE_KEY`) and, on the CPU, the
instruction set (`AOTI_CPU_ISA`).

The batch dimension is dynamic (exported with `torch.export.Dim`); the input is float32 NCHW and the
logits come back float32 whatever the precision inside (a bf16 package casts in its own graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.base import (
    BackendUnavailableError,
    Engine,
    ModelLoadError,
    PreparedRun,
    TensorInfo,
    host_timed,
)

# Keys of the package's own metadata (written by resnet_deploy/targets/aotinductor.py).
META_PRECISION = "resnet_deploy.precision"
META_INPUT_SHAPE = "resnet_deploy.input_shape"  # "3x224x224": one image, without the batch
META_NUM_CLASSES = "resnet_deploy.num_classes"
META_DEVICE = "AOTI_DEVICE_KEY"  # PyTorch's: "cpu" or "cuda"
META_CPU_ISA = "AOTI_CPU_ISA"  # PyTorch's, CPU packages: the vector ISA the kernels were compiled for
META_TORCH = "resnet_deploy.torch"  # the PyTorch that compiled it: an older one may not run the package
# x86 vector ISAs in the order a CPU that has one has the ones before it (PyTorch's names, upper case).
_X86_ISA_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2, "AMX_TILE": 2}


def read_package_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored in a `.pt2` package, read from its archive without loading its kernels."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("_metadata.json") and "/aotinductor/" in n]
            return json.loads(archive.read(names[0])) if names else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return {}


class AOTInductorEngine(Engine):
    name = "aotinductor"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None) -> None:
        try:
            import torch
            import torch._inductor
        except ImportError as exc:
            raise BackendUnavailableError(f"PyTorch is not installed ({exc}); pip install torch") from None
        self.path = Path(path)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA is not available to PyTorch on this machine (use --device cpu)")
        if threads is not None:
            torch.set_num_threads(threads)  # the package's CPU kernels use the same OpenMP pool as PyTorch
        index = int(device.split(":")[1]) if device.startswith("cuda:") else -1
        try:
            self._model = torch._inductor.aoti_load_package(str(self.path), device_index=index)
            meta = dict(self._model.get_metadata())
        except Exception as exc:  # the loader raises RuntimeError with a C++ trace: keep its first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelLoadError(f"{self.path}: PyTorch cannot load this AOTInductor package ({first})") from None
        built_for = meta.get(META_DEVICE, "cpu")
        if built_for != device.split(":")[0]:
            self._model = None
            raise ModelLoadError(f"{self.path}: the package was compiled for {built_for}, not {device}; run it with "
                                 f"--device {built_for} or build it again for {device}")
        stale = _stale(meta, torch, built_for)
        if stale:
            self._model = None
            raise ModelLoadError(f"{self.path}: {stale}; build the package again here (build-engine --target "
                                 "aotinductor)")
        try:
            shape = tuple(int(d) for d in meta[META_INPUT_SHAPE].split("x"))
            classes = int(meta[META_NUM_CLASSES])
        except (KeyError, ValueError):
            self._model = None
            raise ModelLoadError(f"{self.path}: not a resnet-deploy AOTInductor package (its metadata has no "
                                 "input shape or class count); build it with `build-engine --target aotinductor`"
                                 ) from None
        super().__init__(precision=precision or meta.get(META_PRECISION, "fp32"), device=device)
        self._torch = torch
        self.metadata = meta
        self.threads = threads
        self._input = TensorInfo("input", (None, *shape), "float32")
        self._output = TensorInfo("logits", (None, classes), "float32")

    def _run(self, x: Any) -> Any:
        out = self._model(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            # torch.from_numpy refuses negative strides and warns on read-only arrays: copy those.
            x = torch.from_numpy(np.require(batch, requirements=("C", "W"))).to(self.device)
            logits = self._run(x)
            return logits.float().cpu().numpy()

    def _copy_free_run(self, batch: np.ndarray) -> PreparedRun:
        """The batch staged once on the device; on the CPU it shares the host array (no copy at all)."""
        torch = self._torch
        host = np.require(batch, requirements=("C", "W"))
        staged = torch.from_numpy(host).to(self.device)

        def run() -> None:
            with torch.inference_mode():
                self._run(staged)

        if not self.device.startswith("cuda"):
            return PreparedRun(host_timed(run, self.synchronize), copies="excluded", keep=(staged,), input=host)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed_call() -> float:
            with torch.inference_mode():
                start.record()
                self._run(staged)
                end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return PreparedRun(timed_call, copies="excluded", timer="cuda-events", keep=(staged,))

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "torch": self._torch.__version__, "threads": self._torch.get_num_threads(),
                "compiled_for": self.metadata.get(META_DEVICE), "cpu_isa": self.metadata.get(META_CPU_ISA)}

    def close(self) -> None:
        self._model = None
        super().close()



def _stale(meta: dict[str, str], torch: Any, device: str) -> str | None:
    """Why this machine cannot run the package although it loaded (None: it can): another PyTorch version (the
    compiled library is tied to the one that made it), or a CPU package whose vector ISA this CPU lacks."""
    built_with = meta.get(META_TORCH)
    # AOTInductor's packages call PyTorch through its stable C shim, which newer releases keep: an older PyTorch
    # than the one that compiled the package may lack what it calls.
    if built_with and _release(torch.__version__) < _release(built_with):
        return f"compiled with PyTorch {built_with}, newer than this PyTorch {torch.__version__}"
    wanted = (meta.get(META_CPU_ISA) or "").upper()
    if device == "cpu" and wanted in _X86_ISA_RANK:
        here = str(torch.backends.cpu.get_cpu_capability()).upper()
        if _X86_ISA_RANK[wanted] > _X86_ISA_RANK.get(here, 0):
            return f"its kernels use {wanted} instructions and this CPU offers {here}"
    return None


def _release(version: str) -> tuple[int, int, int]:
    """"2.14.1+cu130" → (2, 14, 1): the release, without the local build label or a pre-release tail."""
    import re

    numbers = [int(re.match(r"\d*", part).group() or 0) for part in str(version).split("+")[0].split(".")[:3]]
    major, minor, patch = (numbers + [0, 0, 0])[:3]
    return major, minor, patch
