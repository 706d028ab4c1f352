"""8-bit and 7-bit INT8 weights of the same model, on whatever CPU runs this: the 7-bit artifact's integer kernels
compute what its Q/DQ arithmetic computes (no saturation on any class); on a CPU without VNNI the 8-bit one's do
not. Slow: the ResNet-20 card in tests/data and ../shared/datasets/cifar10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet_deploy.gates import SATURATION_GAP
from resnet_deploy.precision.isa import this_cpu

pytestmark = pytest.mark.slow
CARD = Path(__file__).resolve().parent / "data" / "resnet20_cifar10.safetensors"


@pytest.fixture(scope="module")
def onnx_model(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    return Path(export_onnx(load_model(CARD), tmp_path_factory.mktemp("weight-bits") / "r20.onnx").path)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_seven_bit_kernels_compute_the_arithmetic_and_eight_bit_saturate_without_vnni(
        cifar10_dir: Path, onnx_model: Path, target: str, tmp_path: Path) -> None:
    from resnet_deploy.builder import BuildRequest, build

    if target == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    suffix = ".xml" if target == "openvino" else ".cpu.onnx"
    checks = {}
    for cpu, bits in (("portable", 7), ("vnni", 8)):
        report = build(BuildRequest(onnx=onnx_model, precision="int8", calib_data=cifar10_dir / "train", cpu=cpu,
                                    target=target, output=tmp_path / f"r20.{bits}bit{suffix}"))
        manifest = json.loads(report.output.with_name(report.output.name + ".json").read_text())
        assert manifest["isa"]["weight_bits"] == bits
        checks[bits] = manifest["artifact_check"]["here"]
    assert checks[7]["here"]["images"] == 1000
    # 7-bit weights: this CPU's kernels are the arithmetic, whatever its class.
    assert checks[7]["kernel_gap"] <= SATURATION_GAP, checks[7]
    if this_cpu().cpu_class == "avx2":  # u8×s8 pair sums saturate in 16 bits: 8-bit weights lose agreement
        assert checks[8]["kernel_gap"] > 2.0, checks[8]
        assert checks[8]["here"]["agreement"] < checks[7]["here"]["agreement"]
