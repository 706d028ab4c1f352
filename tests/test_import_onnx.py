"""Any image-classifier ONNX: read, clean, verify and card a graph another exporter wrote.

The foreign graphs are made here with torch's own exporters (legacy TorchScript-based and dynamo),
the way a user's tool would write them: custom I/O names, dynamic batch, BatchNormalization left in,
constants left unfolded. Small bad graphs are built with onnx.helper.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import export_with_both_exporters
from onnx import TensorProto, helper

from resnet_deploy.artifacts import artifact_card
from resnet_deploy.atomic import sha256_file
from resnet_deploy.errors import UsageError
from resnet_deploy.foreign.card import import_onnx
from resnet_deploy.foreign.graph import MIN_OPSET, classifier_io, clean_graph, load_onnx

SIZE = 64
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for module in model.modules():  # trained-like statistics, so a wrong BatchNorm fold would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict:
    """tv18 exported by both torch exporters, plus PyTorch's logits on fixed images."""
    folder = tmp_path_factory.mktemp("foreign")
    model = _resnet18()
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32))
    with torch.no_grad():
        logits = model(images).numpy()
    export_with_both_exporters(model, SIZE, folder / "legacy.onnx", folder / "dynamo.onnx")
    return {"folder": folder, "images": images.numpy(), "logits": logits}


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["out"], {"images": images})[0]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_import_onnx_cleans_cards_and_keeps_the_logits(foreign: dict, exporter: str, cli) -> None:
    source = foreign["folder"] / f"{exporter}.onnx"
    assert _ops(source)["BatchNormalization"] == 20  # the foreign graph really holds what we clean
    digest = sha256_file(source)
    out = foreign["folder"] / f"{exporter}.card.onnx"
    classes = [f"c{i}" for i in range(10)]
    if exporter == "legacy":  # as a user would; the dynamo case in-process (one interpreter start less)
        result = cli("import-onnx", str(source), "-o", str(out), "--mean", ",".join(map(str, IMAGENET[0])),
                     "--std", ",".join(map(str, IMAGENET[1])), "--resize-size", "73", "--name", "tv18",
                     "--classes", ",".join(classes), "--json")
        assert result.returncode == 0, result.stderr
        changes = json.loads(result.stdout)["changes"]
    else:
        changes = import_onnx(source, out, mean=IMAGENET[0], std=IMAGENET[1], resize_size=73, name="tv18",
                              class_names=classes).clean.changes
    assert "BatchNormalization: 20 → 0 (folded into the preceding convolutions)" in changes
    assert sha256_file(source) == digest  # the input is never modified

    ops = _ops(out)
    assert ops["BatchNormalization"] == 0 and ops["Identity"] == 0 and ops["CastLike"] == 0
    cleaned = load_onnx(out)
    io = classifier_io(cleaned, out)
    assert (io.input_name, io.output_name, io.batch, io.num_classes) == ("images", "out", None, 10)
    assert io.opset >= MIN_OPSET
    np.testing.assert_allclose(_run(out, foreign["images"]), foreign["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(_run(out, foreign["images"][:1]), foreign["logits"][:1], atol=1e-4, rtol=0)

    card = artifact_card(out)
    assert card.arch == "tv18" and card.num_classes == 10 and card.class_names[3] == "c3"
    assert card.preprocessing.input_size == SIZE and card.preprocessing.resize_size == 73
    assert card.preprocessing.mean == IMAGENET[0] and card.lineage["foreign_onnx"] is True
    assert card.lineage["source_sha256"] == digest
    props = {p.key: p.value for p in cleaned.metadata_props}
    assert props["resnet_deploy.precision"] == "fp32" and props["batch"] == "dynamic"


def test_clean_graph_alone_keeps_metadata_and_says_what_changed(foreign: dict, tmp_path: Path) -> None:
    # Exporters leave Identity nodes (renamed or shared tensors); put one behind the input.
    model = onnx.load(str(foreign["folder"] / "legacy.onnx"))
    for node in model.graph.node:
        node.input[:] = ["images_copy" if name == "images" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Identity", ["images"], ["images_copy"]))
    model.metadata_props.add(key="origin", value="a foreign tool")
    source = tmp_path / "with_identity.onnx"
    onnx.save(model, str(source))
    report = clean_graph(source, tmp_path / "clean.onnx")
    assert report.opset_before == 17 and report.opset_after >= MIN_OPSET
    assert any(line.startswith("opset 17 →") for line in report.changes)
    assert "Identity: 1 → 0 (removed)" in report.changes
    assert "BatchNormalization: 20 → 0 (folded into the preceding convolutions)" in report.changes
    cleaned = load_onnx(tmp_path / "clean.onnx")
    assert {p.key: p.value for p in cleaned.metadata_props} == {"origin": "a foreign tool"}
    assert report.nodes_after < report.nodes_before and report.max_abs_diff <= 1e-4
    np.testing.assert_allclose(_run(tmp_path / "clean.onnx", foreign["images"]), foreign["logits"], atol=1e-4)
    with pytest.raises(UsageError, match="no resnet-deploy model card"):
        artifact_card(tmp_path / "clean.onnx")  # cleaning alone attaches nothing


def test_import_refuses_to_overwrite_its_input_and_guesses_no_preprocessing(foreign: dict, tmp_path: Path) -> None:
    source = foreign["folder"] / "legacy.onnx"
    with pytest.raises(UsageError, match="is the input"):
        import_onnx(source, source, mean=IMAGENET[0], std=IMAGENET[1])
    with pytest.raises(UsageError, match="--mean and --std are needed"):
        import_onnx(source, tmp_path / "x.onnx", mean=None, std=None)
    with pytest.raises(UsageError, match="--input-size 32 disagrees"):
        import_onnx(source, tmp_path / "x.onnx", mean=IMAGENET[0], std=IMAGENET[1], input_size=32)
    with pytest.raises(UsageError, match="3 class names given; the graph's output has 10"):
        import_onnx(source, tmp_path / "x.onnx", mean=IMAGENET[0], std=IMAGENET[1], class_names=["a", "b", "c"])
    assert not (tmp_path / "x.onnx").exists()


def _graph(inputs: list, output_shape: list, tmp_path: Path, name: str) -> Path:
    """A tiny graph: global average pool of the first input, reshaped to `output_shape`."""
    nodes = [helper.make_node("GlobalAveragePool", [inputs[0].name], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "shape"], ["scores"])]
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(output_shape)],
                               [d if isinstance(d, int) else -1 for d in output_shape])
    graph = helper.make_graph(nodes, name, inputs,
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, output_shape)],
                              initializer=[shape])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_bad_graphs_are_refused_naming_the_problem(tmp_path: Path, cli) -> None:
    nchw = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])
    two = _graph([nchw, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], ["n", 3], tmp_path, "two")
    nhwc = _graph([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32, 32, 3])], ["n", 32],
                  tmp_path, "nhwc")
    no_class = _graph([nchw], ["n", 3, 1, 1], tmp_path, "noclass")
    uint8 = _graph([helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 3, 32, 32])], ["n", 3],
                   tmp_path, "uint8")
    fine = _graph([nchw], ["n", 3], tmp_path, "fine")
    assert classifier_io(load_onnx(fine)).num_classes == 3
    for path, message in ((two, r"2 inputs \(x, y\)"), (nhwc, "is NHWC"), (no_class, "no class dimension"),
                          (uint8, "is UINT8")):
        with pytest.raises(UsageError, match=message):
            classifier_io(load_onnx(path), path)
    result = cli("import-onnx", str(nhwc), "-o", str(tmp_path / "out.onnx"), "--mean", "0.5,0.5,0.5",
                 "--std", "0.5,0.5,0.5")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "NHWC" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


def test_import_onnx_is_a_command() -> None:
    from typer.main import get_command

    from resnet_deploy.cli import app

    assert "import-onnx" in get_command(app).commands  # type: ignore[attr-defined]


def test_card_or_flags_for_a_card_less_graph(foreign: dict) -> None:
    from resnet_deploy.foreign.card import card_or_flags, is_foreign_card

    source = foreign["folder"] / "legacy.onnx"
    model = load_onnx(source)
    with pytest.raises(UsageError, match="--mean and --std are needed"):
        card_or_flags(model, source)
    card = card_or_flags(model, source, mean=IMAGENET[0], std=IMAGENET[1])
    assert is_foreign_card(card) and card.num_classes == 10 and card.preprocessing.input_size == SIZE
