"""`validate` on real (small) data: handwritten digits as a labelled ImageFolder, a resnet20 trained
on them for a few seconds, its FP32 ONNX export (conftest's `trained_digits`), and deliberately broken
artifacts.

The digits (scikit-learn's 8x8 set) are upscaled to 32x32 RGB PNGs; the card asks for 16x16 input
(resize 16, no crop), which keeps training to about a hundred SGD steps of a real resnet20.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.card import ModelCard, Preprocessing, save_card
from resnet_deploy.validate.run import ValidateOptions, validate

TEST_PER_CLASS = 24  # conftest.trained_digits: 240 test images


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores shared by many processes: one intra-op thread avoids OpenMP spin contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli1(cli):
    """`resnet-deploy ARGS` in a fresh interpreter with one torch thread (see one_torch_thread)."""
    return lambda *args: cli(*args, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def digits(trained_digits: dict) -> dict:
    """conftest's trained resnet20 card, its ONNX export and the held-out test ImageFolder."""
    return trained_digits


def _opts(**kwargs) -> ValidateOptions:
    return ValidateOptions(workers=kwargs.pop("workers", 1), **kwargs)


def _save_variant(digits: dict, name: str, *, preprocessing: Preprocessing | None = None,
                  poison: bool = False) -> Path:
    """The trained weights under another card (e.g. wrong mean/std), or with a NaN in the classifier."""
    import copy

    import torch

    model = copy.deepcopy(digits["model"])
    if poison:
        with torch.no_grad():
            model.fc.bias[3] = float("nan")
    card = digits["model_card"]
    if preprocessing is not None:
        card = dataclasses.replace(card, preprocessing=preprocessing)
    return save_card(digits["root"] / name, model, card)


def _copy_data(digits: dict, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(digits["data"], target)
    return target


def test_fp32_onnx_agrees_with_pytorch_on_real_images(digits) -> None:
    result = validate([digits["onnx"], digits["card"]], digits["data"], options=_opts(batch_size=32))
    assert result.passed, result.to_dict()
    onnx_row, torch_row = result.results
    # The PyTorch artifact is the default reference even when listed second.
    assert torch_row.is_reference and not onnx_row.is_reference
    assert result.reference == str(digits["card"])
    assert result.dataset.images == 10 * TEST_PER_CLASS and result.dataset.classes == 10
    assert torch_row.top1 > 70.0, "the fixture model should have learned the digits"
    assert torch_row.top5 >= torch_row.top1
    assert onnx_row.backend == "onnxruntime" and onnx_row.precision == "fp32"
    assert onnx_row.agreement == 100.0 and onnx_row.top5_overlap == 100.0
    assert onnx_row.top1 == torch_row.top1 and onnx_row.top1_delta == 0.0
    assert onnx_row.max_abs_logit_diff is not None and onnx_row.max_abs_logit_diff < 1e-3
    assert onnx_row.cosine_similarity == pytest.approx(1.0, abs=1e-6)
    assert onnx_row.images_per_s and onnx_row.images_per_s > 0
    assert onnx_row.lineage["sha256"] and "card_lineage" in onnx_row.lineage


def test_cli_json_and_report(digits, cli1, tmp_path) -> None:
    report = tmp_path / "validate.md"
    result = cli1("validate", str(digits["card"]), str(digits["onnx"]), "--data", str(digits["data"]),
                 "--limit", "100", "--batch-size", "16", "--workers", "1", "--json", "--report", str(report))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert doc["passed"] is True
    assert doc["dataset"]["images"] == 100 and doc["dataset"]["available"] == 240
    assert doc["dataset"]["classes"] == 10 and doc["dataset"]["skipped"] == 0
    assert len(doc["results"]) == 2
    for row in doc["results"]:
        for key in ("artifact", "backend", "precision", "images", "top1", "top5", "top1_delta", "agreement",
                    "max_abs_logit_diff", "passed"):
            assert key in row, key
        assert 0 <= row["top1"] <= row["top5"] <= 100 and 0 <= row["agreement"] <= 100
        assert row["images"] == 100
    assert doc["results"][0]["reference"] is True and doc["results"][1]["agreement"] == 100.0
    text = report.read_text()
    for heading in ("| artifact |", "## Data set", "## Environment", "## Artifacts and lineage", "skipped"):
        assert heading in text
    assert str(digits["onnx"]) in text and '"sha256"' in text


def test_wrong_mean_std_fails_its_gate_and_prints_the_table(digits, cli1) -> None:
    pre = digits["model_card"].preprocessing
    broken = _save_variant(digits, "wrong_norm.safetensors",
                           preprocessing=dataclasses.replace(pre, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    result = cli1("validate", str(digits["card"]), str(digits["onnx"]), str(broken), "--data", str(digits["data"]),
                 "--workers", "1")
    assert result.returncode == 1, result.stderr
    assert "wrong_norm.safetensors" in result.stdout and "digits_resnet20.onnx" in result.stdout
    assert "FAIL" in result.stdout and "PASS" in result.stdout
    assert "agreement" in result.stdout  # the failure line says which bound it missed
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 artifact(s) failed")


def test_gate_flags_override_precision_defaults(digits, tmp_path) -> None:
    pre = digits["model_card"].preprocessing
    broken = _save_variant(digits, "wrong_norm2.safetensors",
                           preprocessing=dataclasses.replace(pre, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    lenient = validate([digits["card"], broken], digits["data"],
                       options=_opts(limit=60, max_top1_drop=100.0, min_agreement=0.0))
    assert lenient.passed
    assert lenient.results[1].gate.basis == "--max-top1-drop/--min-agreement"
    assert lenient.results[1].agreement < 99.0  # the mean/std really changes predictions


def test_class_count_mismatch_is_a_usage_error(digits, cli1, tmp_path) -> None:
    data = _copy_data(digits, tmp_path)
    shutil.rmtree(data / "test" / "9")
    result = cli1("validate", str(digits["card"]), "--data", str(data))
    assert result.returncode == 2
    assert "10 classes" in result.stderr and "has 9" in result.stderr and "Traceback" not in result.stderr


def test_class_name_mismatch_is_a_usage_error(digits, tmp_path) -> None:
    from resnet_deploy.errors import UsageError

    data = _copy_data(digits, tmp_path)
    (data / "test" / "9").rename(data / "test" / "nine")
    with pytest.raises(UsageError, match="class names differ"):
        validate([digits["onnx"]], data, options=_opts())


def test_corrupt_image_fails_with_its_path_or_is_skipped(digits, cli1, tmp_path) -> None:
    data = _copy_data(digits, tmp_path)
    bad = sorted((data / "test" / "4").glob("*.png"))[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    failed = cli1("validate", str(digits["card"]), "--data", str(data), "--workers", "1")
    assert failed.returncode == 2 and str(bad) in failed.stderr and "--skip-bad" in failed.stderr

    skipped = validate([digits["card"], digits["onnx"]], data, options=_opts(skip_bad=True)).to_dict()
    assert skipped["passed"]
    assert skipped["dataset"]["skipped"] == 1 and skipped["dataset"]["images"] == 10 * TEST_PER_CLASS - 1
    assert skipped["dataset"]["skipped_files"][0]["path"] == str(bad)
    assert all(row["images"] == 10 * TEST_PER_CLASS - 1 for row in skipped["results"])


def test_nan_output_fails_that_artifact(digits, cli1) -> None:
    poisoned = _save_variant(digits, "poisoned.safetensors", poison=True)
    result = cli1("validate", str(digits["card"]), str(poisoned), "--data", str(digits["data"]), "--limit", "50",
                 "--workers", "0", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    healthy, broken = doc["results"]
    assert healthy["passed"] and not broken["passed"] and doc["passed"] is False
    assert broken["nonfinite_outputs"] == 50
    assert "NaN or Inf" in broken["failures"][0]
    assert broken["max_abs_logit_diff"] is None  # no finite rows to compare; JSON stays valid (no NaN)


def test_ten_crop_is_refused_without_room_for_corners(digits, cli1) -> None:
    """The digits card is CIFAR-style (images resized to the input size itself): ten-crop would have to invent
    its corners from zero padding, which the paper never evaluates with; it is refused, pointing at the
    paper's single-view protocol, before any engine is opened."""
    from resnet_deploy.errors import UsageError

    with pytest.raises(UsageError, match=r"single view of the 16×16 image .*Sec\. 4\.2.*drop --ten-crop"):
        validate([digits["card"], digits["onnx"]], digits["data"], options=_opts(ten_crop=True))
    result = cli1("validate", str(digits["card"]), "--data", str(digits["data"]), "--ten-crop", "--workers", "0")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ten-crop: "), result.stderr


def test_ten_crop_and_ensemble_rows(digits) -> None:
    # The same weights under a card that resizes to 16 and crops 14: ten real, different crops.
    pre = dataclasses.replace(digits["model_card"].preprocessing, input_size=14, resize_size=16)
    first, second = (_save_variant(digits, f"crop14_{i}.safetensors", preprocessing=pre) for i in (1, 2))
    single = validate([first], digits["data"], options=_opts())
    result = validate([first, second], digits["data"], options=_opts(ten_crop=True, ensemble=True, batch_size=16))
    assert result.passed and result.ten_crop
    row, twin, ensemble = result.results
    assert ensemble.backend == "ensemble" and ensemble.gate is None and ensemble.images == single.results[0].images
    assert row.transform.startswith("ten-crop: 4 corners + centre (14 px) of the 16-px resize and their mirror")
    # The fixture model never saw shifted or mirrored digits (the paper trains with both), so ten-crop
    # may cost it accuracy here; it must still be far above chance (10 %).
    assert 30.0 < row.top1 <= single.results[0].top1 + 5.0 and row.top5 >= row.top1
    assert twin.agreement == 100.0 and twin.max_abs_logit_diff == 0.0
    # Two identical members: the softmax average predicts what each member predicts.
    assert ensemble.top1 == pytest.approx(row.top1) and ensemble.agreement == 100.0


def test_reference_flag_and_limit(digits) -> None:
    result = validate([digits["card"]], digits["data"], reference=digits["onnx"], options=_opts(limit=30))
    assert [r.backend for r in result.results] == ["onnxruntime", "torch"]
    assert result.results[0].is_reference and result.dataset.images == 30
    assert result.dataset.limit == 30 and result.dataset.available == 240


def test_static_batch_onnx_is_fed_in_chunks(digits, tmp_path) -> None:
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    static = tmp_path / "static8.onnx"
    export_onnx(load_model(digits["card"]), static, batch=8)
    result = validate([digits["card"], static], digits["data"], options=_opts(limit=30, batch_size=12))
    assert result.passed and result.results[1].agreement == 100.0 and result.results[1].images == 30


def test_ten_crop_views() -> None:
    """Ten crops of the card's input size from its larger resize: corners and centre, then their mirror
    images; the centre crop is exactly what the single-view transform gives."""
    import torch
    from PIL import Image

    from resnet_deploy.data import eval_transform
    from resnet_deploy.validate.views import TenCrop

    pre = Preprocessing(16, 20, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    crops = TenCrop(pre)(image)
    assert crops.shape == (10, 3, 16, 16) and crops.dtype == torch.float32
    torch.testing.assert_close(crops[4], eval_transform(pre)(image))
    # torchvision crops the mirrored image, so its top-left is the mirror of the original's top-right.
    torch.testing.assert_close(crops[5:], crops[[1, 0, 3, 2, 4]].flip(-1))
    assert not torch.equal(crops[0], crops[3])  # the corners really differ


@pytest.mark.parametrize("resize", [None, 16, 12])
def test_ten_crop_refuses_cards_without_a_larger_resize(resize) -> None:
    from resnet_deploy.errors import UsageError
    from resnet_deploy.validate.views import TenCrop, ten_crop_problem

    pre = Preprocessing(16, resize, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert "single view of the 16×16 image" in ten_crop_problem(pre)
    with pytest.raises(UsageError, match="zero padding"):
        TenCrop(pre)
    assert ten_crop_problem(dataclasses.replace(pre, resize_size=18)) is None


def test_bad_device_is_a_usage_error(cli1, tmp_path) -> None:
    result = cli1("validate", "m.onnx", "--data", str(tmp_path), "--device", "tpu")
    assert result.returncode == 2 and "--device" in result.stderr


@pytest.mark.slow
def test_cifar10_jpegs_fp32_onnx_parity(cifar10_dir, tmp_path) -> None:
    """Real CIFAR-10 test JPEGs through a resnet20 card and its ONNX export (random weights suffice
    for parity: the same tensors must give the same classes)."""
    import torch

    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    names = sorted(p.name for p in (cifar10_dir / "test").iterdir() if p.is_dir())
    card = ModelCard.default_for("resnet20", class_names=names)
    torch.manual_seed(0)
    card_path = save_card(tmp_path / "r20.safetensors", card.build_model().eval(), card)
    onnx_path = tmp_path / "r20.onnx"
    export_onnx(load_model(card_path), onnx_path)
    result = validate([card_path, onnx_path], cifar10_dir, options=_opts(limit=1000, batch_size=100))
    assert result.dataset.images == 1000 and result.dataset.split == "test" and result.dataset.classes == 10
    assert result.passed and result.results[1].agreement == 100.0
