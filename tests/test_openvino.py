"""OpenVINO backend: ONNX and IR, the precision that really runs, IR build + manifest, missing package.

Small real models (CIFAR ResNet-20 at 32x32, random weights) exported to ONNX; the reference is
PyTorch eager on the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.checkpoints import random_model

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install 'resnet-deploy[openvino]')")

from engines.base import EngineError, EngineInputError  # noqa: E402
from engines.openvino_engine import OpenVINOConfigError, OpenVINOEngine  # noqa: E402
from resnet_deploy.artifacts import artifact_card, manifest_path, open_engine  # noqa: E402
from resnet_deploy.errors import UsageError  # noqa: E402
from resnet_deploy.targets.openvino import build_openvino_ir, default_ir_path, openvino_usable  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CPU_HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def model():
    return random_model("resnet20", seed=0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(model, images) -> np.ndarray:
    with torch.inference_mode():
        return model.model.eval()(torch.from_numpy(images)).numpy()


def _export(loaded, path: Path, batch: int | None = None) -> Path:
    from resnet_deploy.export import export_onnx

    return export_onnx(loaded, path, batch=batch, verify=False).path


@pytest.fixture(scope="module")
def onnx_fp32(model, tmp_path_factory) -> Path:
    return _export(model, tmp_path_factory.mktemp("ov") / "resnet20.onnx")


@pytest.fixture(scope="module")
def onnx_int8(onnx_fp32, tmp_path_factory) -> Path:
    from resnet_deploy.precision import quantize_int8

    out = tmp_path_factory.mktemp("ov8") / "resnet20.int8.onnx"
    return quantize_int8(onnx_fp32, out, calib_data=None, samples=8, random_calibration=True, check_samples=8).path


def test_usable_says_why():
    ok, reason = openvino_usable()
    assert ok and reason.startswith("OpenVINO ")


def test_onnx_fp32_matches_pytorch(onnx_fp32, images, reference):
    with OpenVINOEngine(onnx_fp32, inference_precision="fp32") as engine:
        assert engine.name == "openvino" and engine.precision == "fp32"
        assert engine.input.shape == (None, 3, 32, 32) and engine.output.shape == (None, 10)
        logits = engine.infer(images)
        single = engine.infer(images[:1])
        info = engine.describe()
    assert logits.dtype == np.float32 and logits.shape == (3, 10)
    assert np.abs(logits - reference).max() < 1e-4
    assert np.abs(single - reference[:1]).max() < 1e-4
    assert info["inference_precision"] == "f32" and info["openvino"] and info["performance_hint"] == "LATENCY"


@pytest.mark.parametrize("spelling", ["f32", "FP32"])
def test_precision_spellings(onnx_fp32, spelling):
    with OpenVINOEngine(onnx_fp32, inference_precision=spelling) as engine:
        assert engine.precision == "fp32"


def test_default_precision_is_what_runs(onnx_fp32, images, reference):
    """No hint: the CPU default (bf16 on AVX-512-BF16/AMX CPUs) is reported, never passed off as fp32."""
    with OpenVINOEngine(onnx_fp32) as engine:
        hint = engine.describe()["inference_precision"]
        assert engine.precision == {"bf16": "bf16", "f32": "fp32", "f16": "fp16"}[hint]
        assert engine.precision == ("bf16" if CPU_HAS_BF16 else "fp32")
        assert np.abs(engine.infer(images) - reference).max() < 0.1


def test_bf16_reported_and_close(onnx_fp32, images, reference):
    with OpenVINOEngine(onnx_fp32, inference_precision="bf16") as engine:
        logits = engine.infer(images)
        assert engine.precision == ("bf16" if CPU_HAS_BF16 else "fp32")
    assert np.abs(logits - reference).max() < 0.1


def test_throughput_hint_splits_batch_and_agrees(onnx_fp32, images, reference):
    with OpenVINOEngine(onnx_fp32, inference_precision="f32", performance_hint="throughput") as engine:
        assert engine.performance_hint == "THROUGHPUT"
        assert np.abs(engine.infer(images) - reference).max() < 1e-4


def test_static_batch_is_reshaped_on_demand(model, images, reference, tmp_path):
    static = _export(model, tmp_path / "static.onnx", batch=2)
    with OpenVINOEngine(static, inference_precision="f32") as engine:
        assert engine.input.shape[0] is None  # reshapeable: any batch works
        assert np.abs(engine.infer(images[:2]) - reference[:2]).max() < 1e-4
        assert np.abs(engine.infer(images) - reference).max() < 1e-4


def test_bad_input_and_options(onnx_fp32, tmp_path):
    with OpenVINOEngine(onnx_fp32, inference_precision="f32") as engine:
        with pytest.raises(EngineInputError, match="expects shape"):
            engine.infer(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(EngineInputError, match="float32"):
            engine.infer(np.zeros((1, 3, 32, 32), np.float64))
    with pytest.raises(OpenVINOConfigError, match="LATENCY or THROUGHPUT") as err:
        OpenVINOEngine(onnx_fp32, performance_hint="fast")
    assert err.value.exit_code == 2
    with pytest.raises(OpenVINOConfigError, match="inference precision"):
        OpenVINOEngine(onnx_fp32, inference_precision="fp8")
    with pytest.raises(EngineError, match="does not run on cuda"):
        OpenVINOEngine(onnx_fp32, device="cuda")
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>not a model")
    with pytest.raises(EngineError, match="cannot read this model"):
        OpenVINOEngine(junk)


def test_int8_qdq_runs_quantized(onnx_int8, images, reference):
    with OpenVINOEngine(onnx_int8) as engine:
        assert engine.precision == "int8"
        logits = engine.infer(images)
    assert logits.shape == reference.shape and np.isfinite(logits).all()


def test_ir_round_trip_with_manifest(model, onnx_fp32, images, reference, tmp_path):
    output = tmp_path / "ir" / "resnet20.xml"
    result = build_openvino_ir(onnx_fp32, output, precision="fp32", card=model.card)
    assert result.path == output and output.is_file() and output.with_suffix(".bin").is_file()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert result.runtime_precision == "fp32" and result.inference_precision == "f32"
    assert not result.compressed_to_fp16 and result.max_abs_logit_diff < 1e-4 and result.agreement == 100.0
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["precision"] == "fp32" and manifest["inference_precision_hint"] == "f32"
    assert manifest["source_onnx"]["sha256"] == result.source_sha256
    assert manifest["versions"]["openvino"] and manifest["openvino_version"]
    assert manifest["card"]["preprocessing"]["mean"] == list(model.card.preprocessing.mean)
    assert artifact_card(output).to_dict() == model.card.to_dict()
    # The stored f32 hint is honoured when the IR is opened without one, even on a bf16-capable CPU.
    with open_engine(output) as engine:
        assert engine.name == "openvino" and engine.precision == "fp32"
        assert np.abs(engine.infer(images) - reference).max() < 1e-4
    with open_engine(output, precision="bf16") as engine:  # an explicit request wins
        assert engine.precision == ("bf16" if CPU_HAS_BF16 else "fp32")


def test_bf16_and_fp16_irs(model, onnx_fp32, tmp_path):
    bf16 = build_openvino_ir(onnx_fp32, default_ir_path(tmp_path / "m.onnx", "bf16"), precision="bf16",
                             card=model.card)
    assert bf16.path.name == "m.bf16.xml" and bf16.inference_precision == "bf16"
    assert bf16.runtime_precision == ("bf16" if CPU_HAS_BF16 else "fp32")
    with open_engine(bf16.path) as engine:
        assert engine.precision == bf16.runtime_precision
    fp16 = build_openvino_ir(onnx_fp32, tmp_path / "m.fp16.xml", precision="fp16", card=model.card)
    assert fp16.compressed_to_fp16 and fp16.bin_path.stat().st_size < bf16.bin_path.stat().st_size * 0.6
    assert fp16.agreement >= 75.0


def test_int8_ir(model, onnx_int8, tmp_path):
    result = build_openvino_ir(onnx_int8, tmp_path / "m.int8.xml", precision="int8", card=model.card)
    assert result.runtime_precision == "int8" and result.inference_precision is None
    with open_engine(result.path) as engine:
        assert engine.precision == "int8"


def test_build_refuses_bad_requests_and_leaves_nothing(model, onnx_fp32, tmp_path):
    with pytest.raises(UsageError, match="named .xml"):
        build_openvino_ir(onnx_fp32, tmp_path / "m.bin", precision="fp32", card=model.card)
    with pytest.raises(UsageError, match="Q/DQ"):
        build_openvino_ir(onnx_fp32, tmp_path / "m.int8.xml", precision="int8", card=model.card)
    with pytest.raises(UsageError, match="precision must be"):
        build_openvino_ir(onnx_fp32, tmp_path / "m.xml", precision="fp8", card=model.card)
    assert list(tmp_path.iterdir()) == []


# -- without the package: a real ImportError (sys.modules entry None), in a fresh interpreter -------------


def _without_openvino(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['openvino'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_missing_package_engine_and_target(onnx_fp32):
    code = f"""
from engines.base import BackendUnavailableError
from resnet_deploy.errors import BackendUnavailable
from resnet_deploy.targets.openvino import openvino_usable, build_openvino_ir
from engines.openvino_engine import OpenVINOEngine
print(openvino_usable())
for call in (lambda: OpenVINOEngine({str(onnx_fp32)!r}),
             lambda: build_openvino_ir({str(onnx_fp32)!r}, "x.xml", precision="fp32")):
    try:
        call()
    except (BackendUnavailableError, BackendUnavailable) as exc:
        print("ERR", exc.exit_code, exc)
"""
    done = _without_openvino(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("(False, ") and "resnet-deploy[openvino]" in lines[0]
    assert lines[1:] == ["ERR 2 OpenVINO is not installed (pip install 'resnet-deploy[openvino]')"] * 2


def _cli_without_openvino(*args: str) -> subprocess.CompletedProcess:
    argv = ["resnet-deploy", *args]
    return _without_openvino(f"from resnet_deploy.cli import main; sys.argv = {argv!r}; main()")


def test_missing_package_cli_build_and_validate(model, onnx_fp32, tmp_path):
    """`build-engine --target openvino` and validating an .xml end in one error line naming the extra, exit 2."""
    ir = build_openvino_ir(onnx_fp32, tmp_path / "m.xml", precision="fp32", card=model.card).path
    from PIL import Image

    images = tmp_path / "data"
    for name in model.card.class_names:  # a tiny labelled set with the model's classes
        (images / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(images / name / "0.png")
    for args in (("build-engine", "--onnx", str(onnx_fp32), "--target", "openvino", "-o", str(tmp_path / "x.xml")),
                 ("validate", str(ir), "--data", str(images), "--workers", "0")):
        done = _cli_without_openvino(*args)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2, (args, done.stderr)
        assert errors == ["error: OpenVINO is not installed (pip install 'resnet-deploy[openvino]')"], done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.xml").exists()


def test_a_failed_ir_write_is_one_error_naming_the_output(tmp_path):
    """OpenVINO's own write failure (here: the staging folder gone) is a RuntimeError with a C++ message; the
    build says which output could not be written, and why, in one line."""
    from openvino import opset13 as ops

    from resnet_deploy.targets.openvino import _save_ir

    x = ops.parameter([1, 3], np.float32, name="x")
    model = ov.Model([ops.relu(x)], [x])
    with pytest.raises(UsageError) as caught:
        _save_ir(ov, model, Path("/proc/no-such-folder/m.xml"), False, tmp_path / "m.xml")
    message = str(caught.value)
    assert message.startswith(f"cannot write {tmp_path / 'm.xml'}: ") and "nothing was written" in message
    assert "\n" not in message and caught.value.exit_code == 2
