"""What a file is: its backend (by suffix), its model card, its precision and its manifest, read once.

| suffix | backend | card |
| --- | --- | --- |
| .safetensors .pt .pth .th | PyTorch | the file itself (card or trainer checkpoint) |
| .onnx | ONNX Runtime | ONNX `metadata_props["resnet_deploy.card"]` |
| .xml | OpenVINO | manifest `<name>.json` beside it, key "card" |
| .plan .engine | TensorRT | manifest `<name>.json` beside it, key "card" |

A manifest is named after the whole artifact name (`model.fp16.plan` → `model.fp16.plan.json`), so
an ONNX model and the engine built from it never share one. Every target writes the same `Manifest`
schema; the metadata keys the pipeline writes into ONNX models are defined once, in `metadata_keys.py`.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.base import Engine
from resnet_deploy import registry
from resnet_deploy.artifact_checks import check_artifact_files, check_onnx_input, metadata_of
from resnet_deploy.errors import UsageError
from resnet_deploy.metadata_keys import (
    ARTIFACT_KEY as ARTIFACT_KEY,
)
from resnet_deploy.metadata_keys import (
    CALIBRATION_KEY as CALIBRATION_KEY,
)
from resnet_deploy.metadata_keys import (  # re-exported: the keys live below card.py and precision/
    CARD_KEY as CARD_KEY,
)
from resnet_deploy.metadata_keys import (
    FP16_KEY as FP16_KEY,
)
from resnet_deploy.metadata_keys import (
    FP16_REMAINDER_KEY as FP16_REMAINDER_KEY,
)
from resnet_deploy.metadata_keys import (
    MIXED_PRECISION_KEY as MIXED_PRECISION_KEY,
)
from resnet_deploy.metadata_keys import (
    ONNXRUNTIME_KEY as ONNXRUNTIME_KEY,
)
from resnet_deploy.metadata_keys import (
    PRECISION_KEY as PRECISION_KEY,
)
from resnet_deploy.metadata_keys import (
    QUANTIZATION_KEY as QUANTIZATION_KEY,
)
from resnet_deploy.metadata_keys import (
    SOURCE_ONNX_SHA256_KEY as SOURCE_ONNX_SHA256_KEY,
)
from resnet_deploy.metadata_keys import (
    VERIFICATION_KEY as VERIFICATION_KEY,
)
from resnet_deploy.paths import require_input_file

if TYPE_CHECKING:  # the card class is imported where it is used (it brings torch)
    from resnet_deploy.card import ModelCard

# --- suffixes and manifest formats: read from the backend declarations (registry/backends.py) -------------------
SUFFIXES: dict[str, tuple[str, ...]] = {b.name: b.suffixes for b in registry.backends()}
TORCH_SUFFIXES = SUFFIXES["torch"]
ONNX_SUFFIXES = SUFFIXES["onnxruntime"]
OPENVINO_SUFFIXES = SUFFIXES["openvino"]
TENSORRT_SUFFIXES = SUFFIXES["tensorrt"]

MANIFEST_SCHEMA_VERSION = 2  # 1: three target-specific layouts; 2: one Manifest (a superset of the three)
# `format` names each target's layout; engines/tensorrt/manifest.py reads its own fields by it.
MANIFEST_FORMATS = {b.name: b.manifest_format for b in registry.backends() if b.manifest_format}
MANIFEST_FORMAT_VERSION = 1  # the newest per-target layout a reader of format 1 understands


def backend_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    spec = registry.backend_for_suffix(suffix)
    if spec is not None:
        return spec.name
    known = ", ".join(f"{'/'.join(b.suffixes)} ({b.display})" for b in registry.backends())
    raise UsageError(f"{path}: unknown artifact type {suffix or '(no suffix)'}; expected {known}")


def onnx_stem(path: Path) -> str:
    """model.int8.onnx → model.int8 (the name without the .onnx suffix)."""
    return path.name[: -len(".onnx")] if path.name.lower().endswith(".onnx") else path.stem


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    from resnet_deploy.artifact_checks import load_manifest

    return load_manifest(manifest_path(artifact))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{path}: not a readable ONNX model ({exc})") from None
    return metadata_of(model, path)


# --- the one manifest ---------------------------------------------------------------------------------------------


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest_versions(*extra: tuple[str, str | None]) -> dict[str, str | None]:
    """resnet-deploy and the installed libraries (from `environment`), plus what only the build knows."""
    from resnet_deploy import __version__
    from resnet_deploy.versions import library_versions

    return {"resnet_deploy": __version__, **library_versions(), **dict(extra)}


@dataclass
class Manifest:
    """The sidecar `<artifact>.json` of every target: what was built, from what, how it was checked, with what.

    `target` holds what only one target records (ONNX Runtime providers, OpenVINO inference precision,
    TensorRT GPU and batch profile, ...); it is written at the top level, so readers of the schema-1
    layouts (the TensorRT engine's `EngineManifest`) still find their fields.
    """

    backend: str  # onnxruntime | openvino | tensorrt
    artifact: str  # the file name
    sha256: str  # of the artifact file
    precision: str  # fp32 | fp16 | bf16 | int8
    source_onnx: dict[str, Any]  # {"path", "sha256", "precision"}: the ONNX model the target compiled
    card: dict[str, Any] | None
    artifact_check: dict[str, Any] | None = None  # how the artifact itself was checked
    precision_check: dict[str, Any] | None = None  # the precision model's check against FP32 (from its metadata)
    fp16_remainder: bool = False
    mixed_precision: dict[str, Any] | None = None  # INT8 layers kept out of INT8 and the search's steps
    built_at: str = field(default_factory=now_iso)
    build_seconds: float | None = None
    versions: dict[str, Any] = field(default_factory=manifest_versions)
    notes: list[str] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION
    # The CPU the artifact was verified on (precision/isa.py: class, flags) and, for INT8, the class its weights
    # were made for and their bits; None for GPU targets.
    isa: dict[str, Any] | None = None
    self_check: dict[str, Any] | None = None  # inputs and reference logits, run on another CPU class (selfcheck.py)

    COMMON = ("backend", "artifact", "sha256", "precision", "source_onnx", "card", "artifact_check",
              "precision_check", "fp16_remainder", "mixed_precision", "built_at", "build_seconds", "versions", "notes",
              "schema_version", "isa", "self_check")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        target = data.pop("target")
        clash = set(target) & set(data)
        if clash:
            raise ValueError(f"target fields {sorted(clash)} shadow the common manifest fields")
        return {"format": MANIFEST_FORMATS[self.backend], "format_version": MANIFEST_FORMAT_VERSION, **data,
                **target}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, artifact: str | Path) -> Path:
        from resnet_deploy.atomic import write_text

        path = manifest_path(artifact)
        write_text(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Any manifest this tool wrote; schema-1 layouts map onto the common fields where they had them."""
        by_format = registry.backend_for_format(data.get("format"))
        backend = data.get("backend") or (by_format.name if by_format is not None else "unknown")
        skip = {"format", "format_version", *cls.COMMON}
        common = {k: data[k] for k in cls.COMMON if k in data and k != "backend"}
        common.setdefault("artifact", "")
        common.setdefault("sha256", data.get("plan_sha256") or data.get("xml_sha256") or "")
        common.setdefault("precision", "fp32")
        common.setdefault("source_onnx", {})
        common.setdefault("card", None)
        if "check" in data and "artifact_check" not in data:  # OpenVINO, schema 1
            common["artifact_check"] = data["check"]
            skip.add("check")
        common.setdefault("schema_version", 1)
        return cls(backend=backend, **common, target={k: v for k, v in data.items() if k not in skip})


# --- one artifact -------------------------------------------------------------------------------------------------


class Artifact:
    """A file the pipeline made or reads; everything about it is read on first use and kept."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.backend = backend_for(self.path)  # an unknown suffix is refused here

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, backend={self.backend!r})"

    def require_file(self) -> Artifact:
        require_input_file(self.path)  # a FIFO or a device is refused before anything reads it
        return self

    @cached_property
    def metadata(self) -> dict[str, str]:
        """ONNX metadata_props (empty for other backends)."""
        return onnx_metadata(self.path) if self.backend == "onnxruntime" else {}

    @cached_property
    def manifest_dict(self) -> dict[str, Any] | None:
        return read_manifest(self.path)

    @property
    def manifest(self) -> Manifest | None:
        data = self.manifest_dict
        return Manifest.from_dict(data) if data else None

    @cached_property
    def card(self) -> ModelCard:
        """The model card; an artifact without one is refused (nothing is guessed)."""
        from resnet_deploy.card import ModelCard

        self.require_file()
        if self.backend == "torch":
            from resnet_deploy.checkpoints import load_model

            return load_model(self.path).card
        if self.backend == "onnxruntime":
            text = self.metadata.get(CARD_KEY)
            if text:
                return check_onnx_input(self.path, ModelCard.from_json(text, self.path))
            raise UsageError(
                f"{self.path}: the ONNX model carries no resnet-deploy model card in its metadata; "
                "export it with `resnet-deploy export` (or import its weights with `import-weights`)"
            )
        manifest = self.manifest_dict
        if manifest and isinstance(manifest.get("card"), dict):
            return ModelCard.from_dict(manifest["card"])
        raise UsageError(f"{self.path}: no manifest {manifest_path(self.path).name} with a model card beside it")

    @cached_property
    def precision(self) -> str:
        """The precision the graph carries (PyTorch weights: fp32; engines: their manifest's)."""
        if self.backend == "torch":
            return "fp32"
        if self.backend == "onnxruntime":
            from engines.onnxruntime_engine import graph_precision

            declared = {p.metadata: p.name for p in registry.precisions() if p.metadata}
            # what the pipeline recorded when it made the model; a foreign model: what its graph shows
            return declared.get(self.metadata.get(PRECISION_KEY, "")) or graph_precision(self.path)
        return str((self.manifest_dict or {}).get("precision") or "fp32")

    def open_engine(self, **options: Any) -> Engine:
        return open_engine(self.path, **options)


def artifact_card(path: str | Path) -> ModelCard:
    """The model card of any artifact; an artifact without one is refused (nothing is guessed)."""
    require_input_file(path)
    return Artifact(path).card


def open_engine(
    path: str | Path,
    *,
    backend: str | None = None,
    device: str = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    providers: list[str] | None = None,
    channels_last: bool = False,
    include_copies: bool = True,
    cuda_graph: bool = False,
    performance_hint: str = "LATENCY",
) -> Engine:
    """Open an artifact with the backend its suffix names (or `backend`: OpenVINO reads ONNX too). `precision`
    applies to PyTorch (fp32/fp16/bf16) and OpenVINO (its inference precision); other backends run the precision
    their graph carries. A CPU-verified artifact (`Backend.verified_on_cpu`) runs its self-check first."""
    artifact = require_input_file(path)
    check_artifact_files(artifact)  # a replaced or missing file is refused, naming it
    spec = registry.backend(backend or backend_for(artifact))
    options = registry.OpenOptions(device=device, precision=precision, threads=threads, providers=providers,
                                   channels_last=channels_last, include_copies=include_copies,
                                   cuda_graph=cuda_graph, performance_hint=performance_hint)
    engine = registry.open_with(spec, artifact, options)
    return _self_checked(artifact, engine) if spec.verified_on_cpu else engine


def _self_checked(path: Path, engine: Engine) -> Engine:
    """`engine`, after the artifact's self-check passed on this CPU, where it was verified on another class of CPU
    (`selfcheck.py`); a failed check closes the engine and is refused."""
    from resnet_deploy.selfcheck import verify_if_needed

    try:
        verify_if_needed(path, read_manifest(path), engine)
    except BaseException:
        engine.close()
        raise
    return engine
