"""A classifier exported elsewhere goes through import-onnx → build-engine → validate → bench (issue 14).

The model is a torchvision ResNet-18 (10 classes, 64x64 input) exported by both of torch's exporters
with custom I/O names (`images` → `out`), dynamic batch and BatchNormalization left in. Its weights
are fitted in seconds, not trained (training a ResNet-18 at 64x64 takes minutes on two cores):
BatchNorm statistics from the digits, then the classifier by ridge regression on the pooled random
features of every image, test split included. Accuracy is not what is tested; parity is, and it needs
logits with the margins of a trained model on the images validate sees (on unseen images this head's
margins are small and INT8 agreement falls to ~90%). Calibration uses the train split only. The
images are scikit-learn's handwritten digits, upscaled to 64x64 RGB.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from conftest import export_with_both_exporters
from PIL import Image

SIZE = 64
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 12
FLAGS = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]


def write_digits(root: Path) -> Path:
    """root/{train,test}/digit_<k>/*.png: real handwritten digits, 64x64 RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).astype(np.uint8)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)[:TRAIN_PER_CLASS + TEST_PER_CLASS]
        for rank, index in enumerate(members):
            split = "train" if rank < TRAIN_PER_CLASS else "test"
            folder = root / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[index], mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{index:04d}.png")
    return root


def _tensors(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).glob("*.png")):
            images.append(np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(label)
    x = (torch.from_numpy(np.stack(images)) - 0.5) / 0.25
    return x.permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def fitted_resnet18(data: Path, ridge_scale: float = 1e-3) -> torch.nn.Module:
    """torchvision's ResNet-18 with BatchNorm statistics of the digits and a ridge-fitted classifier."""
    splits = [_tensors(data / split) for split in ("train", "test")]
    x, y = torch.cat([s[0] for s in splits]), torch.cat([s[1] for s in splits])
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the one pass
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    features: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda mod, inputs, out: features.append(inputs[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    f = torch.cat([features[0].double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    target = torch.nn.functional.one_hot(y, 10).double() * 10 - 1
    ridge = ridge_scale * f.pow(2).sum() / len(f) * torch.eye(f.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(f.T @ f + ridge, f.T @ target)
    model.fc.weight.data, model.fc.bias.data = weights[:-1].T.float(), weights[-1].float()
    return model


def export_foreign(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """The model as a user's tool would write it: both exporters, `images` → `out`, BatchNorm left in."""
    paths = {"legacy": folder / "tv18_legacy.onnx", "dynamo": folder / "tv18_dynamo.onnx"}
    export_with_both_exporters(model, SIZE, paths["legacy"], paths["dynamo"])
    return paths


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("foreign_onnx")
    data = write_digits(folder / "digits")
    paths = export_foreign(fitted_resnet18(data), folder)
    return {"folder": folder, "data": data, **paths}


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_import_build_validate_bench(foreign, exporter, cli) -> None:
    raw: Path = foreign[exporter]
    ops = {node.op_type for node in onnx.load(str(raw)).graph.node}
    assert "BatchNormalization" in ops  # the exporter left it for the pipeline to fold
    data = foreign["data"]
    card = raw.with_name(f"{raw.stem}.card.onnx")
    imported = _json(cli("import-onnx", str(raw), "-o", str(card), *FLAGS, "--classes-from", str(data / "train"),
                         "--json"))
    assert imported["io"]["input_name"] == "images" and imported["io"]["output_name"] == "out"

    artifacts = [card]
    for precision, target, suffix in (("--fp16", "onnxruntime", ".fp16.cpu.onnx"),
                                      ("--int8", "onnxruntime", ".int8.cpu.onnx"),
                                      ("--int8", "openvino", ".int8.xml")):
        output = card.with_name(card.name.replace(".onnx", suffix))
        built = _json(cli("build-engine", "--onnx", str(card), precision, "--target", target, "--calib-data",
                          str(data / "train"), "--calib-samples", "100", "-o", str(output), "--json"))
        assert built["precision_check"]["gate"] is not None  # checked on real images, gated
        assert built["clean"] is None  # import-onnx cleaned it already
        artifacts.append(output)

    validated = _json(cli("validate", *map(str, artifacts), "--data", str(data / "test"), "--workers", "0", "--json"))
    assert validated["passed"], validated["results"]
    rows = {Path(r["artifact"]).name: r for r in validated["results"]}
    assert {rows[a.name]["precision"] for a in artifacts} == {"fp32", "fp16", "int8"}

    bench = _json(cli("bench", str(card), str(artifacts[2]), str(raw), "--batch-sizes", "2", "--iters", "3",
                      "--warmup", "1", "--json"))
    measured = {(Path(r["artifact"]).name, r["precision"]) for r in bench["results"]}
    assert {(card.name, "fp32"), (artifacts[2].name, "int8"), (raw.name, "fp32")} <= measured
    reasons = [s["reason"] for s in bench["skipped"] if s["backend"] == "torch"]
    assert reasons and all("no PyTorch twin" in r for r in reasons)  # skipped with a reason, not a crash


def test_card_less_onnx_builds_and_validates_with_flags(foreign, cli, tmp_path) -> None:
    """No import step: build-engine cleans the raw graph itself and says what changed; validate takes the flags."""
    raw, data = foreign["legacy"], foreign["data"]
    output = tmp_path / "tv18.int8.cpu.onnx"
    built = _json(cli("build-engine", "--onnx", str(raw), "--int8", "--target", "onnxruntime", *FLAGS,
                      "--calib-data", str(data / "train"), "--calib-samples", "64", "-o", str(output), "--json"))
    changes = "\n".join(built["clean"]["changes"])
    assert "BatchNormalization: 20 → 0" in changes and "opset 17 → 20" in changes
    session_io = onnx.load(str(output)).graph
    assert [i.name for i in session_io.input] == ["images"] and [o.name for o in session_io.output] == ["out"]

    validated = _json(cli("validate", str(raw), str(output), "--data", str(data / "test"), "--workers", "0",
                          *FLAGS, "--json"))
    assert validated["passed"], validated["results"]
    assert validated["results"][0]["artifact"] == str(raw)

    refused = cli("validate", str(raw), "--data", str(data / "test"))
    assert refused.returncode == 2 and "--mean and --std are needed" in refused.stderr


def test_static_batch_is_benched_at_its_batch_only(foreign, cli, tmp_path) -> None:
    model = fitted_resnet18(foreign["data"])
    static = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(3, 3, SIZE, SIZE),), str(static), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["scores"])
    bench = _json(cli("bench", str(static), "--batch-sizes", "1,8", "--iters", "3", "--warmup", "1", "--json"))
    assert [r["batch_size"] for r in bench["results"]] == [3]
    assert any("fixed at 3" in note for note in bench["notes"])


# --- bad input: one `error:` line naming the problem, through every command -------------------------------------


def _bad_graph(path: Path, inputs: list, output_shape: list[int]) -> Path:
    from onnx import TensorProto, helper

    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["y"])], "bad", inputs, [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("bad")

    def image(name: str, shape: list[int]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Mean()).save(str(folder / "scripted.pt"))
    return {
        "two inputs": (_bad_graph(folder / "two.onnx", [image("a", [1, 3, 8, 8]), image("b", [1, 3, 8, 8])],
                                  [1, 3, 8, 8]), "2 inputs (a, b)"),
        "nhwc": (_bad_graph(folder / "nhwc.onnx", [image("a", [1, 8, 8, 3])], [1, 8, 8, 3]), "is NHWC"),
        "no class dim": (_bad_graph(folder / "noclass.onnx", [image("a", [1, 3, 8, 8])], [1, 3, 8, 8]),
                         "no class dimension"),
        "torchscript": (folder / "scripted.pt", "TorchScript"),
    }


@pytest.mark.parametrize("case", ["two inputs", "nhwc", "no class dim", "torchscript"])
def test_bad_input_is_one_error_line(bad_models, case, cli, tmp_path) -> None:
    path, expected = bad_models[case]
    source = ["--checkpoint", str(path)] if path.suffix == ".pt" else ["--onnx", str(path), *FLAGS]
    commands = [["build-engine", *source, "--target", "onnxruntime"],
                ["validate", str(path), "--data", str(tmp_path), *FLAGS],
                ["bench", str(path), "--iters", "1"]]
    if path.suffix == ".pt":
        commands.append(["build-engine", "--onnx", str(path), "--target", "onnxruntime"])
    for command in commands:
        result = cli(*command)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (command, result.stderr)
        assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, (command, result.stderr)
        wanted = "PyTorch archive" if command[1:2] == ["--onnx"] and path.suffix == ".pt" else expected
        assert wanted in lines[-1], (command, lines[-1])
