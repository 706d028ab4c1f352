"""`resnet-deploy export` and `export_onnx`: BatchNorm folded, full onnx.checker, card in the metadata,
verification that fails loudly and writes nothing, every registry model exportable."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.base import EngineInputError
from engines.onnxruntime_engine import OnnxRuntimeEngine
from resnet_deploy.artifacts import artifact_card
from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
from resnet_deploy.checkpoints import LoadedModel, random_model
from resnet_deploy.cli import main
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.export import DEFAULT_OPSET, default_output_path, export_onnx
from resnet_deploy.models import CIFAR10_MEAN, CIFAR10_STD, get_entry, list_models

SMALL_IMAGENET_INPUT = 64  # the ImageNet family is fully convolutional; 64 px keeps the tests fast
# Big ones run in the slow tier. Plain twins share every code path but the shortcut, and CIFAR depths differ
# only in block count, so the default tier keeps a few of each kind (basic/bottleneck, residual/plain,
# option A/B shortcuts) and the rest are slow too.
SLOW_ARCHS = {"resnet101", "resnet152", "resnet1202", "resnet44", "resnet110", "plain18", "plain32", "plain34",
              "plain44", "plain50", "plain56", "plain101", "plain110", "plain152", "plain1202"}


def run_main(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process, as `resnet-deploy ARGS`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), out.getvalue(), err.getvalue()


def damp_residual_branches(model: torch.nn.Module, gain: float) -> None:
    """Scale each block's last BatchNorm, as training does: random resnet1202 logits otherwise overflow float32."""
    from resnet_deploy.models import BasicBlock

    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, BasicBlock) and block.has_shortcut:
                block.last_bn().weight.mul_(gain)


def small_random(arch: str) -> LoadedModel:
    """Random weights; ImageNet-family cards shrunk to a small input size."""
    loaded = random_model(arch)
    if arch == "resnet1202":
        damp_residual_branches(loaded.model, 0.1)
    if get_entry(arch).family.name == "imagenet":
        pre = dataclasses.replace(loaded.card.preprocessing, input_size=SMALL_IMAGENET_INPUT,
                                  resize_size=SMALL_IMAGENET_INPUT * 8 // 7)
        loaded = dataclasses.replace(loaded, card=dataclasses.replace(loaded.card, preprocessing=pre))
    return loaded


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def digit_images(count: int, size: int = 32) -> np.ndarray:
    """Real handwritten digits (scikit-learn's copy), upsampled to RGB NCHW and normalized like CIFAR."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:count] / 16.0  # (N, 8, 8) in [0, 1]
    big = np.kron(digits, np.ones((size // 8, size // 8)))  # (N, size, size)
    rgb = np.repeat(big[:, None], 3, axis=1)
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    return ((rgb - mean) / std).astype(np.float32)


# --- every model of the registry --------------------------------------------------------------------


def _registry_params() -> list:
    return [pytest.param(a, marks=(pytest.mark.slow,) if a in SLOW_ARCHS else ()) for a in list_models()]


@pytest.mark.parametrize("arch", _registry_params())
def test_every_registry_model_exports_verified_without_batchnorm(arch: str, tmp_path: Path) -> None:
    loaded = small_random(arch)
    size = loaded.card.preprocessing.input_size
    result = export_onnx(loaded, tmp_path / f"{arch}.onnx")

    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert result.input_shape == ["batch", 3, size, size]
    assert result.output_shape == ["batch", loaded.card.num_classes]
    assert result.opset == DEFAULT_OPSET == model.opset_import[0].version
    verification = result.verification
    assert verification is not None and verification.passed
    assert sorted(verification.max_abs_diff_by_batch) == [1, 4]
    assert verification.mode == "relative"  # random weights: bound scales with the logits
    assert artifact_card(result.path).arch == arch


# --- the torchvision done-means test ----------------------------------------------------------------


def trained_like_torchvision_resnet50(calibrate_batchnorm: Callable[..., None]) -> torch.nn.Module:
    """torchvision's resnet50 with weights that behave numerically like trained ones.

    Plain He init with identity BatchNorm statistics is unlike any trained net: the residual stream
    grows with depth and float32 noise alone reaches ~1e-4 on the logits. Training gives BatchNorm
    real statistics and small gains on each block's last BatchNorm; do the same, then scale the
    classifier so the logits span about ±10 as an ImageNet model's do.
    """
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    calibrate_batchnorm(model, shape=(3, 64, 64), batches=1)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, torchvision.models.resnet.Bottleneck):
                block.bn3.weight.mul_(0.2)
        model.fc.weight.mul_(10.0)
    return model.eval()


def test_torchvision_resnet50_state_dict_matches_torchvision_in_onnxruntime(
    tmp_path: Path, calibrate_batchnorm: Callable[..., None]
) -> None:
    reference = trained_like_torchvision_resnet50(calibrate_batchnorm)
    checkpoint = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), checkpoint)
    output = tmp_path / "resnet50.onnx"

    code, out, err = run_main("export", "--arch", "resnet50", "--checkpoint", str(checkpoint), "-o", str(output),
                              "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["verification"]["passed"] and document["verification"]["mode"] == "absolute"
    assert set(document["verification"]["max_abs_logit_diff_by_batch"]) == {"1", "4"}
    assert "RANDOM" not in err
    assert "BatchNormalization" not in op_types(output)
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert metadata["source_sha256"] == sha256_file(checkpoint)
    assert metadata["arch"] == "resnet50" and metadata["input_size"] == "224"

    rng = np.random.default_rng(0)
    with OnnxRuntimeEngine(output) as engine, torch.inference_mode():
        for batch_size in (1, 7):
            images = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
            expected = reference(torch.from_numpy(images)).numpy()
            got = engine.infer(images)
            assert np.abs(expected).max() > 2  # logits on a realistic scale, not near zero
            assert np.abs(got - expected).max() <= 1e-4
            assert (got.argmax(1) == expected.argmax(1)).all()


# --- the CLI on a shared export ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    """`resnet-deploy export --depth 20 --json` in an empty folder (default output path)."""
    folder = tmp_path_factory.mktemp("cli-export")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        code, out, err = run_main("export", "--depth", "20", "--json")
    finally:
        os.chdir(previous)
    return code, out, err, folder


def test_cli_export_default_path_json_and_random_warning(cli_export: tuple[int, str, str, Path]) -> None:
    code, out, err, folder = cli_export
    assert code == 0, err
    assert files_in(folder) == {"resnet20.onnx"}  # nothing else: no temp file left behind
    assert default_output_path("resnet20") == Path("resnet20.onnx")
    document = json.loads(out)  # exactly one JSON document on stdout
    assert document["path"] == "resnet20.onnx" and document["batch"] == "dynamic"
    assert document["input"] == {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert document["output"]["name"] == "logits"
    assert document["random_weights"] is True
    verification = document["verification"]
    assert verification["passed"] and verification["max_abs_logit_diff"] <= verification["tolerance"] * 10
    assert [c["batch_size"] for c in verification["comparisons"]] == [1, 4]
    assert "warning" in err and "RANDOM weights" in err
    assert "BatchNormalization" not in document["node_counts"]


def test_metadata_carries_card_preprocessing_and_lineage(cli_export: tuple[int, str, str, Path]) -> None:
    path = cli_export[3] / "resnet20.onnx"
    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(metadata[CARD_METADATA_KEY])
    assert card == artifact_card(path)
    assert card.arch == "resnet20" and card.num_classes == 10
    assert card.lineage["random_weights"] is True
    assert card.lineage["onnx_export"]["opset"] == DEFAULT_OPSET
    assert metadata["arch"] == "resnet20"
    assert metadata["num_classes"] == "10"
    assert json.loads(metadata["class_names"]) == card.class_names
    assert metadata["input_size"] == "32" and metadata["resize_size"] == "none"
    assert json.loads(metadata["mean"]) == list(CIFAR10_MEAN)
    assert json.loads(metadata["std"]) == list(CIFAR10_STD)
    assert metadata["interpolation"] == "bilinear"
    assert metadata["torch_version"] == torch.__version__
    assert metadata["onnx_version"] == onnx.__version__
    assert metadata["resnet_deploy.precision"] == "fp32"
    assert model.producer_name == "resnet-deploy"


# --- bad input: one error line, exit 2, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [("missing.pth", None), ("not-a-model.txt", b"hello, not a model\n"), ("not-a-model.pth", b"\x00garbage\x01")],
)
def test_bad_checkpoint_is_one_error_line_exit_2_no_file(
    name: str, content: bytes | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    before = files_in(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main("export", "--checkpoint", name, *(("--arch", "resnet20") if content else ()))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0]
    assert out == ""
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [("--arch", "resnet20", "--batch", "0"), ("--arch", "resnet20", "--batch", "many"),
     ("--arch", "resnet20", "--opset", "11"), ("--arch", "nope"), ("--depth", "20", "--arch", "resnet20"),
     ("--arch", "resnet20", "--tolerance", "0"), ("--arch", "resnet20", "--rename", "nonsense")],
)
def test_bad_options_exit_2_without_writing(args: tuple[str, ...], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main("export", *args)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err
    assert files_in(tmp_path) == set()


# --- verification gate ------------------------------------------------------------------------------


def test_failed_verification_exits_1_and_leaves_no_file(tmp_path: Path) -> None:
    output = tmp_path / "strict.onnx"
    code, out, err = run_main("export", "--arch", "resnet20", "--tolerance", "1e-12", "-o", str(output))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error:") and "disagrees with PyTorch" in err
    assert files_in(tmp_path) == set()


class _Drifting(torch.nn.Module):
    """A model whose eager output drifts with each call (Python state): export freezes it, PyTorch doesn't."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x) + float(self.calls)


def test_onnx_that_differs_from_pytorch_is_refused_and_old_file_kept(tmp_path: Path) -> None:
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    drifting = dataclasses.replace(random_model("resnet20"), model=_Drifting(tiny).eval())
    output = tmp_path / "model.onnx"
    output.write_bytes(b"previous artifact")
    with pytest.raises(CheckFailed, match="disagrees with PyTorch") as caught:
        export_onnx(drifting, output)
    assert "left unchanged" in str(caught.value)
    assert output.read_bytes() == b"previous artifact"
    assert files_in(tmp_path) == {"model.onnx"}


class _Overflowing(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e30 * 1e30  # inf in float32, in PyTorch and in ONNX Runtime alike


def test_non_finite_logits_never_pass(tmp_path: Path) -> None:
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 10))
    overflowing = dataclasses.replace(random_model("resnet20"), model=_Overflowing(tiny).eval())
    with pytest.raises(CheckFailed, match="not finite"):
        export_onnx(overflowing, tmp_path / "inf.onnx")
    assert files_in(tmp_path) == set()


def test_no_verify_is_explicit_and_reported(tmp_path: Path) -> None:
    output = tmp_path / "unverified.onnx"
    code, out, err = run_main("export", "--depth", "20", "--no-verify", "--json", "-o", str(output))
    assert code == 0, err
    document = json.loads(out)
    assert document["verified"] is False and document["verification"] is None
    assert "NOT checked" in err
    assert "BatchNormalization" not in op_types(output)
    code, _, err = run_main("export", "--depth", "20", "--no-verify", "--data", str(tmp_path), "-o", str(output))
    assert code == 2 and "--no-verify" in err


def test_bad_real_images_are_refused_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="NCHW"):
        export_onnx(random_model("resnet20"), tmp_path / "bad.onnx", real_images=digit_images(2)[:, :, :16])
    assert files_in(tmp_path) == set()


def digit_folder(root: Path, classes: int, per_class: int = 2) -> Path:
    """An ImageFolder of real handwritten digits as 32x32 RGB PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(classes):
        (root / str(label)).mkdir(parents=True)
        images = digits.images[digits.target == label][:per_class]
        for index, image in enumerate(images):
            pixels = np.kron(image * 255 / 16, np.ones((4, 4))).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(root / str(label) / f"{index}.png")
    return root


def test_foreign_checkpoint_static_batch_opset_and_real_images(
    tmp_path: Path, calibrate_batchnorm: Callable[..., None]
) -> None:
    """--rename and an inferred class count, --batch N, --opset, --data: the table shows each comparison."""
    model = random_model("resnet20", num_classes=7).model
    calibrate_batchnorm(model, shape=(3, 32, 32), batches=1)
    checkpoint = tmp_path / "foreign.pt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    output = tmp_path / "foreign.onnx"
    data = digit_folder(tmp_path / "digits", classes=7)

    code, out, err = run_main("export", "--depth", "20", "--checkpoint", str(checkpoint), "--rename", "backbone.=",
                              "--batch", "3", "--opset", "18", "--data", str(data), "-o", str(output))
    assert code == 0, err
    assert "max |Δ logit|" in out and "random" in out and "images" in out and "FAILED" not in out
    assert "opset 18" in out and "input[3x3x32x32]" in out
    assert "14 real images" in err
    card = artifact_card(output)
    assert card.num_classes == 7 and card.lineage["source_sha256"] == sha256_file(checkpoint)
    assert onnx.load(str(output)).opset_import[0].version == 18
    with OnnxRuntimeEngine(output) as engine, torch.inference_mode():
        assert engine.input.shape == (3, 3, 32, 32) and engine.output.shape == (3, 7)
        images = digit_images(3)
        np.testing.assert_allclose(engine.infer(images), model(torch.from_numpy(images)).numpy(), atol=1e-4, rtol=0)
        with pytest.raises(EngineInputError):
            engine.infer(images[:1])
