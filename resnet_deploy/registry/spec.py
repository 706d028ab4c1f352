"""The two declaration types: what a runtime is (`Backend`) and what a precision is (`Precision`).

Both are frozen dataclasses of plain values and "module:attribute" strings, so a declaration costs nothing
to import: the engine, target and opener are imported only when `load()` asks for them (the registry must
import where onnxruntime, OpenVINO or TensorRT are missing).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEVICES = ("cpu", "cuda")


def load(path: str) -> Any:
    """The object a "package.module:attribute" string names (imported now)."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"{path!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class NotRun:
    """A precision a backend computes elsewhere but not on these devices, and why (shown as a bench skip)."""

    precision: str
    devices: tuple[str, ...]
    reason: str
    as_computed: bool = False  # an artifact of this precision is still timed, at the precision the engine computes


@dataclass(frozen=True)
class TritonForm:
    """How Triton's own backend for this runtime serves its artifact (`triton-repo --backend native`)."""

    model_file: str  # the name Triton looks for in the version folder
    platform: str | None = None  # config.platform (onnxruntime_onnx, tensorrt_plan) ...
    backend: str | None = None  # ... or config.backend (openvino)
    gpu: bool = False  # its instances run on a GPU


@dataclass(frozen=True)
class Backend:
    """One inference runtime: its engine, the target that builds its artifacts, and everything tables ask of it."""

    name: str  # the key everywhere: --target, manifests' "backend", bench rows, Artifact.backend
    display: str  # what messages call it
    engine: str  # "module:Class" of its engines.base.Engine
    suffixes: tuple[str, ...]  # artifact suffixes; the first is the one build-engine names its output with
    precisions: tuple[str, ...]  # the precisions its artifacts (or engine) compute
    devices: tuple[str, ...]  # "cpu", "cuda"
    module: str  # the import whose presence says the runtime is installed
    distributions: tuple[str, ...]  # the pip names that module ships under (versions recorded in manifests)
    extra: str | None  # `pip install 'resnet-deploy[extra]'` installs it; None: a core dependency
    target: str | None = None  # "module:Class" of its targets.base.Target; None: nothing is built for it
    opener: str | None = None  # "module:function" (path, OpenOptions) -> Engine; None: Engine(path, device, threads)
    manifest_format: str | None = None  # the manifest's "format" (None: no manifest, e.g. a PyTorch card)
    manifest_fields: tuple[str, ...] = ()  # the target-specific fields its manifest records
    auto_rank: int | None = None  # build-engine --target auto tries lower ranks first; None: never chosen by auto
    source: str = "onnx"  # what its target compiles: "onnx" (the precision ONNX) or "card" (the PyTorch model card)
    verified_on_cpu: bool = False  # judged on this CPU before it is written; self-checked when opened on another
    judged_for: tuple[str, ...] = ("cpu",)  # the --device builds judged on this CPU (verified_on_cpu targets)
    keeps_precision_onnx: bool = True  # the FP16/INT8 ONNX stays beside the artifact (False: the artifact is it)
    reads_onnx: bool = False  # its engine also runs a plain ONNX model (bench times it beside ONNX Runtime)
    runtime_precisions: tuple[str, ...] = ()  # precisions its engine runs an FP32 model in, chosen when it opens
    options: Mapping[str, str] = field(default_factory=dict)  # build options only it takes: request key → flag
    # precision it never computes → why (bench's skip); a tag (int8-fp16) it does not build → why (build-engine's)
    missing: Mapping[str, str] = field(default_factory=dict)
    not_run: tuple[NotRun, ...] = ()  # precisions it computes, but not on some devices
    triton: TritonForm | None = None  # None: only triton-repo's Python backend serves it
    color: str = "#7f7f7f"  # its colour in bench plots
    slow_build: bool = False  # its target compiles for a minute or more: its contract entry runs under `-m slow`

    @property
    def install_hint(self) -> str:
        return f"pip install 'resnet-deploy[{self.extra}]'" if self.extra else f"pip install {self.distributions[0]}"

    def default_suffix(self) -> str:
        return self.suffixes[0]

    def engine_class(self) -> type:
        return load(self.engine)

    def target_class(self) -> type | None:
        return load(self.target) if self.target is not None else None

    def installed(self) -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(self.module) is not None
        except ValueError:  # sys.modules[module] is None: imports of it are blocked
            return False

    def why_not(self, precision: str, device: str) -> str | None:
        """Why this backend does not compute `precision` on `device` (None: it does)."""
        kind = "cuda" if device.startswith("cuda") else "cpu"
        if precision not in self.precisions:
            return self.missing.get(precision) or f"{self.display} does not compute {precision}"
        for rule in self.not_run:
            if rule.precision == precision and kind in rule.devices:
                return rule.reason
        return None

    def timed_as_built(self, precision: str, device: str) -> bool:
        """An artifact of `precision` that this backend computes differently on `device` is timed as built."""
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return any(r.precision == precision and kind in r.devices and r.as_computed for r in self.not_run)


@dataclass(frozen=True)
class Precision:
    """One numeric precision: how build-engine asks for it, how it is made, gated, recorded and named."""

    name: str  # fp32 | fp16 | bf16 | int8: manifests, --precisions, bench rows, file names
    display: str  # what tables and messages call it
    flag: str | None  # build-engine's flag (None: the default)
    gate: tuple[float, float]  # validate's gate: (largest top-1 drop in points, smallest top-1 agreement in %)
    build_margin: float  # points build-engine's agreement check adds to the gate (gates.py says why)
    metadata: str | None  # the value of PRECISION_KEY in an ONNX carrying it (None: no ONNX graph carries it)
    maker: str | None = None  # "module:function" that makes its ONNX from the FP32 one (precision/); None: none
    remainders: tuple[str, ...] = ()  # precisions the part it leaves unconverted may take (int8: fp16)
    calibrated: bool = False  # its maker needs calibration images (--calib-data or --random-calibration)
    help: str = ""  # build-engine's --flag help

    def tag(self, remainder: str | None = None) -> str:
        """The precision as file names carry it: int8, or int8-fp16 with an FP16 remainder."""
        return f"{self.name}-{remainder}" if remainder else self.name
