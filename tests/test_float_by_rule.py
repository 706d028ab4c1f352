"""INT8 keeps a transformer's attention and normalization in float by rule (ViT: LayerNorm, Softmax, the
MatMuls of two activations); its weight MatMuls stay INT8, and a ResNet has nothing the rule takes."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
import torchvision

from resnet_deploy.precision.float_by_rule import float_by_rule

LAYERS = 2
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-block ViT on 32x32 input from torch's own (dynamo) exporter, with a resnet-deploy card."""
    from resnet_deploy.foreign.card import import_onnx

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=LAYERS, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    folder = tmp_path_factory.mktemp("vit")
    raw = folder / "vit.raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), dynamo=True, input_names=["image"],
                                    output_names=["scores"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    external_data=False, verbose=False)
    program.save(str(raw))
    return import_onnx(raw, folder / "vit.onnx", mean=MEAN, std=STD).output


def _initializer_fed(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    names = {i.name for i in model.graph.initializer}
    return any(i in names for i in node.input)


def test_the_rule_takes_attention_and_normalization_not_weight_matmuls(vit_onnx: Path) -> None:
    model = onnx.load(str(vit_onnx))
    chosen = float_by_rule(model)
    ops = Counter(node.op_type for node in chosen)
    assert ops["Softmax"] == LAYERS  # one per attention
    assert ops["LayerNormalization"] == 2 * LAYERS + 1  # two per block and the final one
    assert ops["MatMul"] == 2 * LAYERS  # QKᵀ and (softmax)V per block
    by_name = {node.name: node for node in model.graph.node}
    assert not any(_initializer_fed(model, by_name[n.node]) for n in chosen if n.op_type == "MatMul")
    weight_matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and _initializer_fed(model, n)]
    assert weight_matmuls and not {n.name for n in weight_matmuls} & {n.node for n in chosen}


def test_a_resnet_has_nothing_the_rule_takes(tmp_path: Path) -> None:
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    path = export_onnx(random_model("resnet20", seed=0), tmp_path / "r20.onnx", verify=False).path
    assert float_by_rule(onnx.load(str(path))) == []


def test_int8_leaves_them_in_float_and_records_them(vit_onnx: Path, tmp_path: Path) -> None:
    from resnet_deploy.precision import quantize_int8

    result = quantize_int8(vit_onnx, tmp_path / "vit.int8.onnx", calib_data=None, random_calibration=True,
                           samples=16, check_samples=16)
    kept = {node.node for node in result.float_by_rule}
    assert Counter(node.op_type for node in result.float_by_rule)["Softmax"] == LAYERS
    model = onnx.load(str(result.path))
    quantized_tensors = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    by_name = {node.name: node for node in model.graph.node}
    assert kept <= set(by_name)  # the names ONNX Runtime excluded are the Q/DQ model's
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for name in kept:  # each computes in float, on float inputs (what feeds a weight layer next is INT8 there)
        assert not dequantized & set(by_name[name].input), name
    softmax = [by_name[n.node] for n in result.float_by_rule if n.op_type == "Softmax"]
    assert not quantized_tensors & {out for node in softmax for out in node.output}  # probabilities stay float
    weight_matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in kept]
    assert weight_matmuls and all(any(i in dequantized for i in n.input) for n in weight_matmuls)  # still INT8
    recorded = json.loads({p.key: p.value for p in model.metadata_props}["resnet_deploy.quantization"])
    assert {item["node"] for item in recorded["float_by_rule"]} == kept


def test_fp16_keeps_layernorm_in_fp32_and_onnxruntime_opens_it(vit_onnx: Path, tmp_path: Path) -> None:
    """onnxruntime 1.31.1 died (SIGSEGV) opening an FP16 ViT whose LayerNormalization ran in FP16; in a
    subprocess, so a crash fails this test instead of the whole run."""
    import subprocess
    import sys

    output = tmp_path / "vit.fp16.cpu.onnx"
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "build-engine", "--onnx", str(vit_onnx), "--fp16",
                           "--target", "onnxruntime", "--output", str(output), "--json"],
                          capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert json.loads(done.stdout)["precision"] == "fp16"
    model = onnx.load(str(output))
    recorded = json.loads({p.key: p.value for p in model.metadata_props}["resnet_deploy.fp16"])
    assert "LayerNormalization" in recorded["fp32_ops"]
