"""The artifacts `bench --depth/--arch` builds: the ONNX models (and TensorRT plans on a GPU) of one architecture
with random weights, built once with `resnet_deploy.builder`'s stages into a cache folder keyed by architecture,
opset and precision, and rebuilt when a version that changes them changes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_FORMAT = 2  # 2: keyed on the TensorRT and resnet-deploy versions too
RANDOM_CALIBRATION_SAMPLES = 32  # ranges from random images only matter for latency; few are enough

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resnet-deploy" / "bench"


def versions_key() -> dict[str, str | None]:
    """Every version that changes what the cached files hold: the exporter, the precision tools, TensorRT."""
    from resnet_deploy import __version__
    from resnet_deploy.environment import library_versions

    versions = library_versions()
    return {"resnet_deploy": __version__, **{name: versions.get(name)
                                             for name in ("torch", "onnx", "onnxruntime", "tensorrt")}}


def _default_opset() -> int | None:
    try:
        from resnet_deploy import export
    except ImportError:
        return None
    return getattr(export, "DEFAULT_OPSET", None)


class ArtifactCache:
    """The ONNX models (and TensorRT plans) of one architecture with random weights, built once by
    `resnet_deploy.builder`'s stages and reused.

    Folder: `<cache>/<arch>-opset<N>/`; `cache.json` records the versions the files were built with
    (`versions_key`), and a change of any of them rebuilds them.
    """

    def __init__(self, root: Path, loaded: Any, *, calib_data: Path | None, calib_samples: int | None,
                 progress: Progress | None = None) -> None:
        self.loaded = loaded
        self.arch = loaded.card.arch
        opset = _default_opset()
        self.folder = Path(root) / (f"{self.arch}-opset{opset}" if opset else self.arch)
        self.calib_data = calib_data
        self.calib_samples = calib_samples
        self._progress = progress or (lambda message: None)
        self._built: dict[str, Path] = {}
        self._key = {"format": CACHE_FORMAT, "arch": self.arch, "opset": opset, "seed": loaded.card.lineage.get("seed"),
                     **versions_key()}
        self._fresh = self._key_matches()

    def _key_matches(self) -> bool:
        try:
            return json.loads((self.folder / "cache.json").read_text()) == self._key
        except (OSError, json.JSONDecodeError):
            return False

    def _reuse(self, path: Path, source: Path | None = None) -> bool:
        if not (self._fresh and path.is_file()):
            return False
        return source is None or path.stat().st_mtime >= source.stat().st_mtime

    def _mark_fresh(self) -> None:
        if not self._fresh:
            from resnet_deploy.atomic import write_text

            write_text(self.folder / "cache.json", json.dumps(self._key, indent=2) + "\n")
            self._fresh = True

    def _listener(self) -> Any:
        from resnet_deploy.builder import BuildListener

        return BuildListener()  # the cache says what it builds itself; the build's own notes are for build-engine

    def fp32_onnx(self) -> Path:
        path = self.folder / "model.onnx"
        if "fp32" in self._built or self._reuse(path):
            return self._built.setdefault("fp32", path)
        from resnet_deploy.builder import export_model

        self._progress(f"exporting {self.arch} to ONNX → {path}")
        self._built["fp32"] = export_model(self.loaded, path, self._listener())
        self._mark_fresh()
        return self._built["fp32"]

    def _precision_onnx(self, key: str, path: Path, request: Any) -> Path:
        source = self.fp32_onnx()
        if key in self._built or self._reuse(path, source):
            return self._built.setdefault(key, path)
        from resnet_deploy.builder import make_precision
        from resnet_deploy.precision import read_source

        result = make_precision(read_source(source), path, request, self._listener(), cache_base=path)
        self._built[key] = Path(result.path)
        return self._built[key]

    def fp16_onnx(self) -> Path:
        from resnet_deploy.builder import BuildRequest

        path = self.folder / "model.fp16.onnx"
        if "fp16" not in self._built and not self._reuse(path, self.fp32_onnx()):
            self._progress(f"converting {self.arch} to FP16 → {path}")
        return self._precision_onnx("fp16", path, BuildRequest(precision="fp16"))

    def calibration_tag(self) -> str:
        if self.calib_data is None:
            return "random"
        text = f"{self.calib_data.resolve()}|{self.calib_samples}"
        return "calib-" + hashlib.sha256(text.encode()).hexdigest()[:10]

    def int8_onnx(self) -> Path:
        from resnet_deploy.builder import BuildRequest

        path = self.folder / f"model.int8.{self.calibration_tag()}.onnx"
        if self.calib_data is None:
            # minmax: the fastest method, and the ranges of random images only matter for latency
            request = BuildRequest(precision="int8", random_calibration=True, calib_samples=RANDOM_CALIBRATION_SAMPLES,
                                   calib_method="minmax")
            what = "random calibration images"
        else:
            request = BuildRequest(precision="int8", calib_data=self.calib_data,
                                   **({"calib_samples": self.calib_samples} if self.calib_samples else {}))
            what = f"calibrating on {self.calib_data}"
        if "int8" not in self._built and not self._reuse(path, self.fp32_onnx()):
            self._progress(f"quantizing {self.arch} to INT8 ({what}) → {path}")
        return self._precision_onnx("int8", path, request)

    def onnxruntime_int8_cpu(self) -> Path:
        """The INT8 model as `build-engine --target onnxruntime` ships it for the CPU: activations as uint8
        (exact, and what ONNX Runtime's x86 integer kernels take), optimized offline."""
        source = self.int8_onnx()
        path = source.with_name(source.stem + ".cpu.onnx")
        if "int8-cpu" in self._built or self._reuse(path, source):
            return self._built.setdefault("int8-cpu", path)
        from resnet_deploy.builder import compile_artifact

        self._progress(f"optimizing the INT8 model for ONNX Runtime on the CPU → {path}")
        built = compile_artifact("onnxruntime", source, path, precision="int8", card=self.loaded.card, device="cpu")
        self._built["int8-cpu"] = built.path
        return built.path

    def onnx_for(self, precision: str) -> Path:
        own = {"fp32": self.fp32_onnx, "fp16": self.fp16_onnx, "int8": self.int8_onnx}
        if precision in own:
            return own[precision]()
        # Any other declared precision made in ONNX without calibration: made by its maker, like FP16.
        from resnet_deploy.builder import BuildRequest

        path = self.folder / f"model.{precision}.onnx"
        if precision not in self._built and not self._reuse(path, self.fp32_onnx()):
            self._progress(f"converting {self.arch} to {precision} → {path}")
        return self._precision_onnx(precision, path, BuildRequest(precision=precision))

    def tensorrt_plan(self, precision: str, batch: int) -> Path:
        """A strongly typed TensorRT plan compiled from the ONNX of `precision`, tuned for `batch` (profile 1..batch).
        The plan's manifest lets the engine refuse it on another GPU or TensorRT version; the file name keys both."""
        from resnet_deploy.builder import compile_artifact
        from resnet_deploy.targets.tensorrt import TensorRTBuildOptions

        source = self.onnx_for(precision)
        calib = f"{self.calibration_tag()}." if precision == "int8" else ""
        trt = versions_key().get("tensorrt") or "none"
        path = self.folder / f"model.{precision}.{calib}{_gpu_tag()}.trt{trt}.b{batch}.plan"
        if self._reuse(path, source):
            return path
        self._progress(f"building the TensorRT {precision} engine (batch {batch}) for {self.arch} → {path}")
        options = TensorRTBuildOptions(min_batch=1, opt_batch=batch, max_batch=batch)
        compile_artifact("tensorrt", source, path, precision=precision, card=self.loaded.card, options=options)
        return path


    def card(self) -> Path:
        """The in-memory model saved as a model card (what a card-compiling target builds from)."""
        from resnet_deploy.card import save_card

        path = self.folder / "model.safetensors"
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            save_card(path, self.loaded.model, self.loaded.card)
        return path

    def target_artifact(self, backend: str, precision: str, device: str = "cpu") -> Path:
        """The artifact a declared backend's target compiles from the ONNX of `precision` (the FP32 ONNX for a
        precision no ONNX carries, e.g. bf16): how a backend without a case of its own in `bench/plan.py` is timed
        for `--depth/--arch`."""
        from resnet_deploy import registry
        from resnet_deploy.builder import compile_artifact

        spec = registry.backend(backend)
        made_in_onnx = registry.precision(precision).maker is not None
        source = self.onnx_for(precision) if made_in_onnx else self.fp32_onnx()
        if spec.source == "card":  # it compiles the PyTorch model: the cached model as a card
            source = self.card()
        calib = f"{self.calibration_tag()}." if precision == "int8" else ""
        path = self.folder / f"model.{precision}.{calib}{backend}.{device}{spec.default_suffix()}"
        if self._reuse(path, source):
            return path
        self._progress(f"building the {spec.display} {precision} artifact for {self.arch} → {path}")
        compile_artifact(backend, source, path, precision=precision, card=self.loaded.card, device=device)
        return path


def _gpu_tag() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "gpu"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
