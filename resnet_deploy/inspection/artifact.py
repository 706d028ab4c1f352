"""What `inspect` reports for engine artifacts that are not ONNX: an OpenVINO IR (`.xml`, and its weights
`.bin`) and a TensorRT plan (`.plan`/`.engine`). Nothing here needs TensorRT, and OpenVINO only when it is
installed: the IR's inputs and outputs come from OpenVINO when it is there, else from the XML itself; a
plan is described by its manifest and by the version in its header."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_deploy.artifacts import manifest_path, read_manifest
from resnet_deploy.errors import UsageError
from resnet_deploy.inspection.manifest import hash_checks, manifest_rows
from resnet_deploy.inspection.onnx import TensorSummary

# OpenVINO element types (and the XML's port precisions) in numpy's words, as `inspect x.onnx` writes them.
_DTYPES = {"f32": "float32", "fp32": "float32", "f16": "float16", "fp16": "float16", "bf16": "bfloat16",
           "f64": "float64", "i8": "int8", "u8": "uint8", "i32": "int32", "i64": "int64", "boolean": "bool",
           # TensorRT DataType names, as a plan's manifest records its tensors
           "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
           "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
_IO_FROM = {"openvino": "the IR, read by OpenVINO", "xml": "the IR's XML (OpenVINO is not installed)",
            "manifest": "the manifest"}


@dataclass
class ArtifactSummary:
    path: Path
    kind: str  # "openvino-ir", "openvino-weights" or "tensorrt-plan"
    backend: str
    size_bytes: int
    inputs: list[TensorSummary] = field(default_factory=list)
    outputs: list[TensorSummary] = field(default_factory=list)
    io_from: str | None = None  # where inputs/outputs were read: "openvino", "xml" or "manifest"
    manifest_path: Path | None = None
    manifest: dict[str, Any] | None = None
    hashes_match: dict[str, bool] = field(default_factory=dict)
    facts: list[tuple[str, str]] = field(default_factory=list)  # kind-specific (label, text) rows
    details: dict[str, Any] = field(default_factory=dict)  # the same facts for --json
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "kind": self.kind, "backend": self.backend, "size_bytes": self.size_bytes,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "io_from": self.io_from, **self.details,
            "manifest_path": str(self.manifest_path) if self.manifest_path else None,
            "hashes_match": self.hashes_match, "manifest": self.manifest, "notes": self.notes,
        }

    def rows(self) -> list[tuple[str, str]]:
        rows = [("kind", self.kind.replace("-", " ")), ("size", f"{self.size_bytes / 1e6:.2f} MB")]
        rows += [("input", t.describe()) for t in self.inputs]
        rows += [("output", t.describe()) for t in self.outputs]
        if self.io_from:
            rows.append(("i/o from", _IO_FROM.get(self.io_from, self.io_from)))
        rows += self.facts
        if self.manifest is not None and self.manifest_path is not None:
            rows += manifest_rows(self.manifest_path, self.manifest, self.hashes_match)
        rows += [("note", note) for note in self.notes]
        return rows


def summarize_artifact(path: str | Path) -> ArtifactSummary:
    """An OpenVINO `.xml`/`.bin` or a TensorRT `.plan`/`.engine`; other suffixes are the caller's."""
    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    suffix = source.suffix.lower()
    if suffix == ".xml":
        return _openvino_ir(source)
    if suffix == ".bin":
        return _openvino_weights(source)
    if suffix in (".plan", ".engine"):
        return _tensorrt_plan(source)
    from resnet_deploy import registry

    spec = registry.backend_for_suffix(suffix)
    if spec is not None and spec.manifest_format is not None:  # any other declared target's artifact
        return _declared_artifact(source, spec)
    raise UsageError(f"{source}: not an OpenVINO IR (.xml/.bin) or a TensorRT plan (.plan/.engine)")


def _declared_artifact(path: Path, spec: Any) -> ArtifactSummary:
    """A target's artifact this module has no reader for: what its manifest records (its declared fields)."""
    summary = ArtifactSummary(path, f"{spec.name}-artifact", spec.name, path.stat().st_size)
    _attach_manifest(summary)
    manifest = summary.manifest or {}
    for name in spec.manifest_fields:
        if manifest.get(name) not in (None, {}, []):
            summary.facts.append((name.replace("_", " "), str(manifest[name])))
    return summary


# --- OpenVINO ----------------------------------------------------------------------------------------


def _openvino_ir(xml: Path) -> ArtifactSummary:
    summary = ArtifactSummary(xml, "openvino-ir", "openvino", xml.stat().st_size)
    weights = xml.with_suffix(".bin")
    if weights.is_file():
        summary.size_bytes += weights.stat().st_size
        summary.facts.append(("files", f"{xml.name} + {weights.name} (its weights)"))
    else:
        summary.notes.append(f"no {weights.name} beside it: the IR's weights are missing, OpenVINO cannot load it")
    try:
        summary.inputs, summary.outputs = _io_from_openvino(xml)
        summary.io_from = "openvino"
    except ImportError:
        summary.inputs, summary.outputs = _io_from_xml(xml)
        summary.io_from = "xml"
    _attach_manifest(summary)
    manifest = summary.manifest or {}
    if manifest:
        hint = manifest.get("inference_precision_hint")
        summary.facts.append(("openvino", str(manifest.get("openvino_version", "?"))))
        summary.facts.append(("inference hint", hint or "none (the device's default)"))
        built_on = manifest.get("built_on") or {}
        device = built_on.get("device_name") or built_on.get("device") or "the build machine"
        summary.facts.append(("ran as", f"{manifest.get('runtime_precision', '?')} on {device}"))
        check = manifest.get("artifact_check") or manifest.get("check") or {}  # schema 2, schema 1
        if check:
            # `agreement` is a percentage already (schema 1 and 2 alike)
            summary.facts.append(("build check", f"top-1 agreement {float(check.get('agreement', 0)):.1f} %, "
                                                  f"max |Δ logit| {float(check.get('max_abs_logit_diff', 0)):.3g} "
                                                  f"vs {check.get('reference', 'the source')}"))
        summary.details["openvino_version"] = manifest.get("openvino_version")
    return summary


def _openvino_weights(bin_path: Path) -> ArtifactSummary:
    xml = bin_path.with_suffix(".xml")
    if not xml.is_file():
        raise UsageError(f"{bin_path}: a .bin file is the weights half of an OpenVINO IR, and there is no "
                         f"{xml.name} beside it to describe it; inspect the .xml of the IR")
    summary = ArtifactSummary(bin_path, "openvino-weights", "openvino", bin_path.stat().st_size)
    summary.facts.append(("weights of", f"the OpenVINO IR {xml.name}"))
    summary.details["ir"] = str(xml)
    manifest = read_manifest(xml)
    if manifest is not None:
        checks = hash_checks(xml, manifest)
        if bin_path.name in checks:
            summary.hashes_match = {bin_path.name: checks[bin_path.name]}
            summary.facts.append(("hash", "matches the IR's manifest" if checks[bin_path.name] else
                                  "DIFFERS from the IR's manifest: the weights changed after the build"))
    summary.notes.append(f"for inputs, outputs, precision and the model card: resnet-deploy inspect {xml}")
    return summary


def _io_from_openvino(xml: Path) -> tuple[list[TensorSummary], list[TensorSummary]]:
    import openvino as ov  # ImportError → the XML fallback

    try:
        with _native_stderr_captured():  # its frontends (TensorFlow's absl) log raw lines as they probe the file
            model = ov.Core().read_model(str(xml))
    except Exception as exc:  # OpenVINO raises its own types for a bad IR
        raise UsageError(f"{xml}: OpenVINO cannot read this IR ({openvino_reason(exc)})") from None

    def port(p: Any) -> TensorSummary:
        names = sorted(p.get_names())
        shape = [None if str(d) == "?" or "." in str(d) else int(str(d)) for d in p.get_partial_shape()]
        dtype = p.get_element_type().get_type_name()
        return TensorSummary(names[0] if names else "?", _DTYPES.get(dtype, dtype), shape)

    return [port(p) for p in model.inputs], [port(p) for p in model.outputs]


def _io_from_xml(xml: Path) -> tuple[list[TensorSummary], list[TensorSummary]]:
    """Parameter and Result layers of the IR, read as XML (OpenVINO is not installed)."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise UsageError(f"{xml}: not a readable OpenVINO IR ({exc})") from None
    if root.tag != "net":
        raise UsageError(f"{xml}: not an OpenVINO IR (its root element is <{root.tag}>, not <net>)")
    inputs, outputs = [], []
    for layer in root.iter("layer"):
        if layer.get("type") == "Parameter":
            data = layer.find("data")
            port = layer.find("output/port")
            names = (port.get("names") if port is not None else None) or layer.get("name", "?")
            dims = (data.get("shape", "") if data is not None else "").replace(" ", "")
            shape = [None if d in ("?", "-1") or ".." in d else int(d) for d in dims.split(",") if d]
            dtype = data.get("element_type", "?") if data is not None else "?"
            inputs.append(TensorSummary(names.split(",")[0], _DTYPES.get(dtype, dtype), shape))
        elif layer.get("type") == "Result":
            port = layer.find("input/port")
            name = layer.get("output_names") or layer.get("name", "?").removesuffix("/sink_port_0")
            dims = [d.text or "-1" for d in port.iter("dim")] if port is not None else []
            shape = [None if not d.lstrip("-").isdigit() or int(d) < 0 else int(d) for d in dims]
            dtype = (port.get("precision", "?") if port is not None else "?").lower()
            outputs.append(TensorSummary(name.split(",")[0], _DTYPES.get(dtype, dtype), shape))
    return inputs, outputs


# --- TensorRT ----------------------------------------------------------------------------------------


def _tensorrt_plan(plan: Path) -> ArtifactSummary:
    from engines.tensorrt.manifest import MANIFEST_FORMAT
    from engines.tensorrt.support import PLAN_HEADER_SIZE, format_version, read_plan_version

    summary = ArtifactSummary(plan, "tensorrt-plan", "tensorrt", plan.stat().st_size)
    with plan.open("rb") as handle:
        header = read_plan_version(handle.read(PLAN_HEADER_SIZE))
    summary.details["plan_header_version"] = format_version(header) if header else None
    _attach_manifest(summary)
    manifest = summary.manifest or {}
    if manifest and manifest.get("format") != MANIFEST_FORMAT:
        summary.notes.append(f"{summary.manifest_path}: not a TensorRT engine manifest ({manifest.get('format')})")
    options = manifest.get("build_options") or {}
    if header:
        summary.facts.append(("plan header", f"TensorRT {format_version(header)}"))
    elif options.get("version_compatible"):
        summary.facts.append(("plan header", "not the ordinary layout (a version-compatible plan)"))
    else:
        summary.notes.append("the first bytes do not read as an ordinary TensorRT plan header: it may be no plan "
                             "(TensorRT's deserialization has the last word)")
    if not manifest:
        return summary
    gpu = manifest.get("gpu") or {}
    summary.facts.append(("built with", f"TensorRT {manifest.get('tensorrt_version', '?')} on {gpu.get('name', '?')}"
                                        f" (compute capability {gpu.get('compute_capability', '?')})"))
    layers = manifest.get("layer_precisions") or {}
    if layers:
        summary.facts.append(("layers", ", ".join(f"{n} {p}" for p, n in layers.items())))
    batch = manifest.get("batch_profile") or {}
    if batch:
        profile = f"min {batch.get('min')}, opt {batch.get('opt')}, max {batch.get('max')}"
        summary.facts.append(("batch profile", profile))
    compat = [f"{k}={v}" for k, v in options.items() if k in ("version_compatible", "hardware_compatibility")]
    if compat:
        summary.facts.append(("compatibility", ", ".join(compat)))
    summary.inputs = [_manifest_tensor(manifest.get("input"))] if manifest.get("input") else []
    summary.outputs = [_manifest_tensor(manifest.get("output"))] if manifest.get("output") else []
    summary.io_from = "manifest" if summary.inputs or summary.outputs else None
    summary.details["tensorrt_version"] = manifest.get("tensorrt_version")
    return summary


def _manifest_tensor(data: dict[str, Any]) -> TensorSummary:
    shape = [None if not isinstance(d, int) or d < 0 else d for d in data.get("shape") or []]
    dtype = str(data.get("dtype", "?"))
    return TensorSummary(str(data.get("name", "?")), _DTYPES.get(dtype, dtype), shape)


def _attach_manifest(summary: ArtifactSummary) -> None:
    """Read the manifest beside the artifact (a missing one is a note, not an error: the file still has facts)."""
    summary.manifest_path = manifest_path(summary.path)
    summary.manifest = read_manifest(summary.path)
    if summary.manifest is None:
        build = f"--target {summary.backend}"
        summary.notes.append(f"no manifest {summary.manifest_path.name} beside it (precision, model card and source "
                             f"are recorded there by `resnet-deploy build-engine {build}`); validate and bench "
                             "need it")
        summary.manifest_path = None
        return
    summary.hashes_match = hash_checks(summary.path, summary.manifest)


def openvino_reason(exc: BaseException) -> str:
    """OpenVINO's message without its source-location lines ("Exception from src/…/core.cpp:84:"), which
    come first and say nothing to a user: the reason is what follows them, whole."""
    lines = [line.strip() for line in str(exc).splitlines()]
    reason = " ".join(line for line in lines if line and not line.startswith("Exception from "))
    return reason or type(exc).__name__


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file while native code runs: its log lines would come before,
    and instead of, our one `error:` line. Python-level stderr is untouched."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (a captured stream): nothing to redirect
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
