"""Issue 16's promise on a well-trained model: the ResNet-20 trained here on the CIFAR-10 JPEGs
(tests/data/resnet20_cifar10.safetensors, ~1 MB) built with the default `build-engine --int8` for ONNX Runtime
and OpenVINO passes validate's default gates on the test set, with at most a few layers kept out of INT8, and
the layers kept out are the ones `sensitivity` ranks first. Slow: needs ../shared/datasets/cifar10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CARD = Path(__file__).resolve().parent / "data" / "resnet20_cifar10.safetensors"
TEST_IMAGES = 2000  # spread evenly over the ten classes; the docs hold the full 10,000


@pytest.fixture(scope="module")
def onnx_model(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    return Path(export_onnx(load_model(CARD), tmp_path_factory.mktemp("int8-cifar") / "r20.onnx").path)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_default_int8_build_passes_validate_on_cifar10(cli, cifar10_dir: Path, onnx_model: Path, target: str,
                                                       tmp_path: Path) -> None:
    if target == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    output = tmp_path / ("r20.int8.xml" if target == "openvino" else "r20.int8.cpu.onnx")
    built = cli("build-engine", "--onnx", str(onnx_model), "--int8", "--calib-data", str(cifar10_dir / "train"),
                "--target", target, "--output", str(output), "--json")
    assert built.returncode == 0, built.stderr
    manifest = json.loads(Path(f"{output}.json").read_text())
    kept = (manifest.get("mixed_precision") or {}).get("kept_out") or []
    assert len(kept) <= 4, kept  # "at most a few layers"
    checked = cli("validate", str(onnx_model), str(output), "--data", str(cifar10_dir), "--limit", str(TEST_IMAGES),
                  "--json")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    rows = {Path(r["artifact"]).name: r for r in json.loads(checked.stdout)["results"]}
    assert rows[output.name]["passed"] and rows[output.name]["images"] == TEST_IMAGES
