"""`inspect` for every artifact kind: OpenVINO IR (.xml and its .bin), TensorRT plan (.plan/.engine, from its
manifest and plan header, no TensorRT needed) and the ONNX Runtime artifact (with its manifest); `--json` for each."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
from pathlib import Path

import pytest

from engines.tensorrt.manifest import EngineManifest, manifest_path
from engines.tensorrt.support import PLAN_TAG
from resnet_deploy.artifacts import Manifest
from resnet_deploy.checkpoints import random_model
from resnet_deploy.cli import main
from resnet_deploy.export import export_onnx


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), out.getvalue(), err.getvalue()


def rows_text(path: Path) -> str:
    """The table's rows as one line each (the printed table wraps long cells at the terminal's width)."""
    from resnet_deploy.inspection.artifact import summarize_artifact
    from resnet_deploy.inspection.onnx import summarize_onnx

    summary = summarize_onnx(path) if path.suffix == ".onnx" else summarize_artifact(path)
    return "\n".join(f"{label}: {text}" for label, text in summary.rows())


def inspect_json(path: Path) -> dict:
    code, out, err = run_main("inspect", str(path), "--json")
    assert code == 0, err
    return json.loads(out)  # exactly one JSON document


@pytest.fixture(scope="module")
def model():
    return random_model("resnet20", seed=0)


@pytest.fixture(scope="module")
def onnx_fp32(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("inspect") / "resnet20.onnx", verify=False).path


# --- OpenVINO ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ir(onnx_fp32) -> Path:
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install 'resnet-deploy[openvino]')")
    from resnet_deploy.targets.openvino import build_openvino_ir

    return build_openvino_ir(onnx_fp32, onnx_fp32.with_name("resnet20.xml")).path


def test_inspect_openvino_ir_table_and_json(ir: Path, onnx_fp32: Path) -> None:
    code, out, err = run_main("inspect", str(ir))
    assert code == 0 and "openvino ir" in out and "float32[?x3x32x32]" in out, err
    for text in ("openvino ir", "input: float32[?x3x32x32]", "logits: float32[?x10]", "read by OpenVINO",
                 "resnet20.xml.json", "resnet20, 10 classes", "centre crop 32", "matches the manifest"):
        assert text in rows_text(ir), text
    # the manifest stores a percentage: shown as is (was multiplied by 100 again: "10000.0 %")
    agreement = json.loads(ir.with_name("resnet20.xml.json").read_text())["artifact_check"]["agreement"]
    assert 0 <= agreement <= 100 and f"top-1 agreement {agreement:.1f} %," in rows_text(ir)
    doc = inspect_json(ir)
    assert doc["kind"] == "openvino-ir" and doc["backend"] == "openvino" and doc["io_from"] == "openvino"
    assert doc["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 3, 32, 32]}]
    assert doc["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [None, 10]}]
    assert doc["manifest"]["precision"] == "fp32" and doc["manifest"]["card"]["arch"] == "resnet20"
    assert doc["manifest"]["source_onnx"]["sha256"] == hashlib.sha256(onnx_fp32.read_bytes()).hexdigest()
    assert doc["hashes_match"] == {"resnet20.xml": True, "resnet20.bin": True}
    assert doc["size_bytes"] == ir.stat().st_size + ir.with_suffix(".bin").stat().st_size


def test_xml_fallback_reads_what_openvino_reads(ir: Path) -> None:
    """Without OpenVINO the I/O come from the XML itself; they must say what OpenVINO says."""
    from resnet_deploy.inspection.artifact import _io_from_openvino, _io_from_xml

    assert _io_from_xml(ir) == _io_from_openvino(ir)


def test_inspect_bin_points_at_the_xml_and_warns_of_nothing(ir: Path, tmp_path: Path) -> None:
    weights = ir.with_suffix(".bin")
    code, out, err = run_main("inspect", str(weights))
    assert code == 0, err
    assert "weights" in out and "resnet20.xml" in out and "matches the IR's manifest" in rows_text(weights)
    assert "pickle" not in err.lower() and "code" not in err.lower() and "warning" not in err.lower()
    doc = inspect_json(weights)
    assert doc["kind"] == "openvino-weights" and doc["ir"] == str(ir) and doc["hashes_match"] == {weights.name: True}

    changed = tmp_path / "changed"
    changed.mkdir()
    for file in (ir, weights, ir.with_name(ir.name + ".json")):
        (changed / file.name).write_bytes(file.read_bytes())
    with (changed / weights.name).open("ab") as handle:
        handle.write(b"\0")
    assert inspect_json(changed / ir.name)["hashes_match"] == {"resnet20.xml": True, "resnet20.bin": False}
    assert "DIFFERS from the manifest" in rows_text(changed / ir.name)

    lonely = tmp_path / "lonely.bin"
    lonely.write_bytes(weights.read_bytes())
    code, out, err = run_main("inspect", str(lonely))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "weights half of an OpenVINO IR" in err and "lonely.xml" in err


def test_xml_fallback_on_a_handwritten_ir(tmp_path: Path) -> None:
    """The fallback runs where OpenVINO is missing: the IR's documented layout, Parameter and Result layers."""
    from resnet_deploy.errors import UsageError
    from resnet_deploy.inspection.artifact import _io_from_xml

    xml = tmp_path / "tiny.xml"
    xml.write_text("""<?xml version="1.0"?>
<net name="tiny" version="11"><layers>
  <layer id="0" name="images" type="Parameter" version="opset1">
    <data shape="?,3,224,224" element_type="f16"/>
    <output><port id="0" precision="FP16" names="images"><dim>-1</dim><dim>3</dim><dim>224</dim><dim>224</dim>
    </port></output>
  </layer>
  <layer id="1" name="probs/sink_port_0" type="Result" version="opset1">
    <input><port id="0" precision="FP32"><dim>-1</dim><dim>1000</dim></port></input>
  </layer>
</layers></net>""")
    inputs, outputs = _io_from_xml(xml)
    assert [(t.name, t.dtype, t.shape) for t in inputs] == [("images", "float16", [None, 3, 224, 224])]
    assert [(t.name, t.dtype, t.shape) for t in outputs] == [("probs", "float32", [None, 1000])]
    bad = tmp_path / "bad.xml"
    bad.write_text("<html></html>")
    with pytest.raises(UsageError, match="not an OpenVINO IR"):
        _io_from_xml(bad)


# --- TensorRT (no TensorRT here: a plan file in the documented layout, and its manifest) -----------------


def _plan_bytes(version: tuple[int, int, int, int]) -> bytes:
    """trtexec --getPlanVersionOnly's layout: u32 tag, u32 serialization 0, version in bytes 24..27."""
    header = struct.pack("<II", PLAN_TAG, 0) + bytes(16) + bytes(version)
    return header + bytes(range(256)) * 8


def _write_plan(folder: Path, name: str = "resnet20.fp16.plan", *, with_manifest: bool = True) -> Path:
    plan = folder / name
    plan.write_bytes(_plan_bytes((10, 13, 3, 9)))
    if with_manifest:  # what build-engine --target tensorrt writes (targets/tensorrt.py), TensorRT's fields on top
        Manifest(
            backend="tensorrt", artifact=plan.name, sha256=hashlib.sha256(plan.read_bytes()).hexdigest(),
            precision="fp16", source_onnx={"path": "resnet20.fp16.onnx", "sha256": "ab" * 32, "precision": "fp16"},
            card=random_model("resnet20").card.to_dict(), built_at="2026-11-29T12:00:00+00:00",
            versions={"resnet_deploy": "0.1.0", "tensorrt": "10.13.3.9"},
            target={"tensorrt_version": "10.13.3.9", "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"},
                    "batch_profile": {"min": 1, "opt": 8, "max": 32}, "plan_version": "10.13.3.9",
                    "layer_precisions": {"fp16": 19, "fp32": 1},
                    "input": {"name": "input", "shape": [-1, 3, 32, 32], "dtype": "HALF"},
                    "output": {"name": "logits", "shape": [-1, 10], "dtype": "HALF"},
                    "build_options": {"version_compatible": False, "hardware_compatibility": "none"},
                    "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()},
        ).write(plan)
        # The engine reads the same file: the manifest is one TensorRT itself would accept.
        assert EngineManifest.from_dict(json.loads(manifest_path(plan).read_text())).gpu_name == "NVIDIA H200"
    return plan


def test_inspect_tensorrt_plan_from_manifest_and_header(tmp_path: Path) -> None:
    plan = _write_plan(tmp_path)
    code, out, err = run_main("inspect", str(plan))
    assert code == 0 and "tensorrt plan" in out and "NVIDIA H200" in out, err
    for text in ("tensorrt plan", "TensorRT 10.13.3.9", "NVIDIA H200", "compute capability 9.0", "fp16",
                 "input: float16[?x3x32x32]", "min 1, opt 8, max 32", "resnet20, 10 classes", "matches the manifest"):
        assert text in rows_text(plan), text
    doc = inspect_json(plan)
    assert doc["kind"] == "tensorrt-plan" and doc["backend"] == "tensorrt" and doc["io_from"] == "manifest"
    assert doc["plan_header_version"] == "10.13.3.9" and doc["tensorrt_version"] == "10.13.3.9"
    assert doc["manifest"]["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert doc["outputs"] == [{"name": "logits", "dtype": "float16", "shape": [None, 10]}]
    assert doc["hashes_match"] == {plan.name: True}


def test_inspect_engine_suffix_without_manifest_and_a_non_plan(tmp_path: Path) -> None:
    bare = _write_plan(tmp_path, "bare.engine", with_manifest=False)
    code, out, err = run_main("inspect", str(bare))
    assert code == 0, err
    assert "TensorRT 10.13.3.9" in out and "no manifest bare.engine.json" in rows_text(bare)
    doc = inspect_json(bare)
    assert doc["manifest"] is None and doc["plan_header_version"] == "10.13.3.9" and doc["inputs"] == []

    fake = tmp_path / "fake.plan"
    fake.write_bytes(b"PK\x03\x04 not a plan at all" * 4)
    code, out, _ = run_main("inspect", str(fake))
    assert code == 0 and "may be no plan" in rows_text(fake)
    assert inspect_json(fake)["plan_header_version"] is None


# --- ONNX Runtime artifact ---------------------------------------------------------------------------------


def test_inspect_onnxruntime_artifact_shows_its_manifest(onnx_fp32: Path) -> None:
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    artifact = build_onnxruntime_artifact(onnx_fp32, onnx_fp32.with_name("resnet20.cpu.onnx")).path
    code, out, err = run_main("inspect", str(artifact))
    assert code == 0 and "resnet20.cpu.onnx" in out, err
    for text in ("resnet20.cpu.onnx.json", "resnet-deploy/onnxruntime", "optimized for", "CPUExecutionProvider",
                 "resnet20, 10 classes", "matches the manifest", "input: float32[batchx3x32x32]"):
        assert text in rows_text(artifact), text
    doc = inspect_json(artifact)
    assert doc["manifest"]["format"] == "resnet-deploy/onnxruntime" and doc["manifest"]["precision"] == "fp32"
    assert doc["hashes_match"] == {artifact.name: True} and doc["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    # A plain ONNX model has no manifest, and says so in JSON too.
    plain = inspect_json(onnx_fp32)
    assert plain["manifest"] is None and plain["hashes_match"] == {}
