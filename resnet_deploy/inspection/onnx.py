"""What `inspect model.onnx` reports: I/O tensors with shapes, opset, node counts by type, metadata."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_deploy.artifact_checks import metadata_of, require_graph
from resnet_deploy.card import CARD_METADATA_KEY
from resnet_deploy.errors import UsageError, first_line
from resnet_deploy.inspection.manifest import hash_checks, manifest_rows


@dataclass
class TensorSummary:
    name: str
    dtype: str
    shape: list[int | str | None]  # a named dynamic dimension is a string, an unnamed one None

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class OnnxSummary:
    path: Path
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]  # domain ("" is the default ONNX domain) → version
    producer: str
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    node_counts: dict[str, int]
    initializers: int
    parameters: int
    metadata: dict[str, str] = field(default_factory=dict)
    # An ONNX Runtime artifact (`build-engine --target onnxruntime`) has a manifest beside it.
    manifest_path: Path | None = None
    manifest: dict[str, Any] | None = None
    hashes_match: dict[str, bool] = field(default_factory=dict)

    @property
    def opset(self) -> int | None:
        return self.opsets.get("") or self.opsets.get("ai.onnx")

    @property
    def card(self) -> dict[str, Any] | None:
        text = self.metadata.get(CARD_METADATA_KEY)
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "opsets": self.opsets,
            "producer": self.producer,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "nodes": sum(self.node_counts.values()),
            "node_counts": self.node_counts,
            "initializers": self.initializers,
            "parameters": self.parameters,
            # The card is shown parsed; the flat keys as stored.
            "card": self.card,
            "metadata": {k: v for k, v in self.metadata.items() if k != CARD_METADATA_KEY},
            "manifest_path": str(self.manifest_path) if self.manifest_path else None,
            "hashes_match": self.hashes_match,
            "manifest": self.manifest,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) pairs for a two-column table."""
        other_domains = ", ".join(f"{d}:{v}" for d, v in self.opsets.items() if d not in ("", "ai.onnx"))
        rows = [
            ("size", f"{self.size_bytes / 1e6:.2f} MB"),
            ("producer", self.producer or "(unknown)"),
            ("ir version", str(self.ir_version)),
            ("opset", str(self.opset) + (f" (+ {other_domains})" if other_domains else "")),
        ]
        rows += [("input", t.describe()) for t in self.inputs]
        rows += [("output", t.describe()) for t in self.outputs]
        counts = sorted(self.node_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append(("nodes", f"{sum(self.node_counts.values())}: " + ", ".join(f"{op} {n}" for op, n in counts)))
        rows.append(("parameters", f"{self.parameters:,} in {self.initializers} initializers"))
        for key, value in sorted(self.metadata.items()):
            if key == CARD_METADATA_KEY:
                continue
            rows.append((key, _shorten(value)))
        card = self.card
        if card is not None and card.get("lineage"):
            lineage = card["lineage"]
            rows.append(("card lineage", _shorten(", ".join(f"{k}={v}" for k, v in lineage.items()), 200)))
        if self.manifest is not None and self.manifest_path is not None:
            rows += _runtime_rows(self.manifest)
            rows += manifest_rows(self.manifest_path, self.manifest, self.hashes_match)
        return rows


def summarize_onnx(path: str | Path) -> OnnxSummary:
    import onnx

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{source}: not a readable ONNX model ({first_line(exc)})") from None
    require_graph(model, source)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    # Python ints: a declared [2^40, 2^40] would wrap around in int64 (numpy) and show a small count
    parameters = sum(math.prod(int(d) for d in init.dims) for init in graph.initializer)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return OnnxSummary(
        path=source,
        size_bytes=source.stat().st_size,
        ir_version=int(model.ir_version),
        opsets={entry.domain: int(entry.version) for entry in model.opset_import},
        producer=producer,
        # Older exporters list initializers among the inputs; they are weights, not inputs.
        inputs=[_tensor(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_tensor(v) for v in graph.output],
        node_counts=dict(Counter(node.op_type for node in graph.node)),
        initializers=len(graph.initializer),
        parameters=parameters,
        metadata=metadata_of(model, source),
        **_manifest_fields(source),
    )


def _manifest_fields(source: Path) -> dict[str, Any]:
    """The manifest beside an ONNX Runtime artifact; a plain ONNX model has none."""
    from resnet_deploy.artifacts import manifest_path, read_manifest

    manifest = read_manifest(source)
    if manifest is None:
        return {}
    return {"manifest_path": manifest_path(source), "manifest": manifest,
            "hashes_match": hash_checks(source, manifest)}


def _runtime_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """What only an ONNX Runtime artifact's manifest says: where and how it was optimized, and its check."""
    rows = []
    if manifest.get("device"):
        providers = ", ".join(manifest.get("providers") or [])
        rows.append(("optimized for", f"{manifest['device']} ({providers}), "
                                      f"{manifest.get('optimization_level', '?')} graph optimizations"))
    check = manifest.get("artifact_check") or {}
    if isinstance(check, dict) and "agreement" in check:
        rows.append(("build check", f"top-1 agreement {float(check['agreement']):.2f} % with the precision model"))
    return rows


def _tensor(value: Any) -> TensorSummary:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    shape: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            shape.append(dim.dim_param)
        else:
            shape.append(None)
    return TensorSummary(value.name, dtype, shape)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
