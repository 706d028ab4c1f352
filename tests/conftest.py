"""Shared fixtures. Tests make their own small data; nothing is downloaded.

Session fixtures built once for the whole run: `digits` (a resnet20 trained on 8x8 digits, exported; the
FP16/INT8/sensitivity tests start from it), `digits_folder` (scikit-learn's handwritten digits as
train/test ImageFolder PNGs), `trained_digits` (a resnet20 card trained on digits for a few seconds,
its FP32 ONNX export and a held-out test folder), and `calibrate_batchnorm` (gives a random model
BatchNorm statistics, so its logits look like a trained model's). Test modules never import each other.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CIFAR10_DIR = REPO.parent / "shared" / "datasets" / "cifar10"

# Calibration caches go to the user's cache folder: the suite keeps its own (subprocesses inherit it).
os.environ.setdefault("RESNET_DEPLOY_CACHE_DIR", tempfile.mkdtemp(prefix="resnet-deploy-test-cache-"))

# Two cores are shared by the whole suite: one thread per test process keeps runs predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `resnet-deploy ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "resnet_deploy", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR10_DIR}")
    return CIFAR10_DIR


DIGITS_SIZE = 16  # image size of `digits_folder` (the trainer tests train at this size)
DIGIT_CLASSES = [str(i) for i in range(10)]
TEST_PER_CLASS = 24  # `trained_digits`: 240 held-out test images
TRAIN_STEPS = 120


def make_digits_folder(root: Path, size: int = DIGITS_SIZE) -> Path:
    """train/ and test/ ImageFolder splits of the 1,797 8x8 digits, upscaled to `size` RGB PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    for rank, index in enumerate(order):
        split = "test" if rank < len(order) // 5 else "train"
        gray = (digits.images[index] / 16.0 * 255).astype(np.uint8)
        rgb = np.stack([gray, 255 - gray, gray // 2 + 64], axis=-1)
        folder = root / split / f"digit_{digits.target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size), Image.BILINEAR).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make_digits_folder` at `DIGITS_SIZE`, built once (read-only for the tests)."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits_size() -> int:
    return DIGITS_SIZE


def _calibrate_batchnorm(module: Any, *, shape: tuple[int, ...], batches: int = 4, seed: int = 0) -> None:
    """Give BatchNorm real running statistics (train-mode passes), so logits look like a trained model's."""
    import torch

    torch.manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    module.train()
    with torch.no_grad():
        for _ in range(batches):
            module(torch.randn(16, *shape))
    for norm in norms:
        norm.momentum = 0.1
    module.eval()


@pytest.fixture(scope="session")
def calibrate_batchnorm() -> Callable[..., None]:
    return _calibrate_batchnorm


def _digit_images() -> tuple[list, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images / 16.0 * 255.0, 0, 255).astype(np.uint8)
    images = [Image.fromarray(p).resize((32, 32), Image.BILINEAR).convert("RGB") for p in pixels]
    return images, digits.target.astype(np.int64)


def _train_digits(images: list, labels: np.ndarray, train_idx: list[int], card: Any) -> Any:
    """About a hundred SGD steps of a real resnet20 on exactly what validate will feed it."""
    import torch

    from resnet_deploy.data import eval_transform

    transform = eval_transform(card.preprocessing)
    x = torch.stack([transform(images[i]) for i in train_idx])
    y = torch.from_numpy(labels[train_idx])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one intra-op thread avoids OpenMP spin contention
    try:
        torch.manual_seed(0)
        model = card.build_model().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(0)
        for _ in range(TRAIN_STEPS):
            batch = torch.randint(0, len(y), (32,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained resnet20 card (16x16 input), its ONNX export, and a held-out test ImageFolder (PNG files).

    Keys: root, data, card (path), onnx (path), model (the module), model_card. Treat them as read-only.
    """
    from resnet_deploy.card import ModelCard, save_card
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    root = tmp_path_factory.mktemp("trained-digits")
    images, labels = _digit_images()
    test_idx: list[int] = []
    for c in range(10):
        test_idx += [int(i) for i in np.flatnonzero(labels == c)[-TEST_PER_CLASS:]]
    train_idx = sorted(set(range(len(labels))) - set(test_idx))
    for i in test_idx:
        folder = root / "data" / "test" / DIGIT_CLASSES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        images[i].save(folder / f"{i:04d}.png")

    card = ModelCard.default_for("resnet20", class_names=DIGIT_CLASSES)
    card = dataclasses.replace(card, dataset="digits", preprocessing=dataclasses.replace(
        card.preprocessing, input_size=DIGITS_SIZE, resize_size=None))
    model = _train_digits(images, labels, train_idx, card)
    card_path = save_card(root / "digits_resnet20.safetensors", model, card)
    onnx_path = root / "digits_resnet20.onnx"
    export_onnx(load_model(card_path), onnx_path)
    return {"root": root, "data": root / "data", "card": card_path, "onnx": onnx_path, "model": model,
            "model_card": card}


# --- `digits`: the FP16/INT8 model (test_precision, test_sensitivity) --------------------------------------------

PRECISION_DIGITS_SIZE = 8  # digits are 8x8; a CIFAR ResNet-20 runs at any size divisible by 4


@dataclass
class PrecisionDigits:
    root: Path  # train/ and test/ ImageFolder trees of PNG files
    onnx: Path  # the exported FP32 model (card in its metadata)
    images: np.ndarray  # test split, preprocessed
    labels: np.ndarray
    fp32_top1: float


def _write_digit_pngs(root: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(pixels))
    for split, indices in (("train", order[:1300]), ("test", order[1300:])):
        for i in indices:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).convert("RGB").save(folder / f"{i}.png")


def _train_precision_digits(root: Path, card_path: Path) -> None:
    import torch

    from resnet_deploy.card import ModelCard, Preprocessing, save_card
    from resnet_deploy.data import eval_transform, open_dataset
    from resnet_deploy.models import create_model

    pre = Preprocessing(input_size=PRECISION_DIGITS_SIZE, resize_size=None, mean=(0.5, 0.5, 0.5),
                        std=(0.25, 0.25, 0.25))
    card = ModelCard(arch="resnet20", num_classes=10, class_names=[str(i) for i in range(10)], preprocessing=pre,
                     dataset="sklearn digits")
    train = open_dataset(root, split="train")
    transform = eval_transform(pre)
    x = torch.stack([transform(train.load(i)) for i in range(len(train))])
    y = torch.tensor(train.labels)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    epochs, batch = 3, 64
    steps = epochs * (len(x) // batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for b in range(len(x) // batch):
            index = order[b * batch:(b + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    save_card(card_path, model.eval(), card)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> PrecisionDigits:
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.data import eval_transform, open_dataset
    from resnet_deploy.export import export_onnx
    from resnet_deploy.onnx_check import run_logits, session

    root = tmp_path_factory.mktemp("digits")
    _write_digit_pngs(root)
    _train_precision_digits(root, root / "digits.safetensors")
    loaded = load_model(root / "digits.safetensors")
    onnx_path = export_onnx(loaded, root / "models" / "digits.onnx").path
    test = open_dataset(root, split="test")
    transform = eval_transform(loaded.card.preprocessing)
    images = np.stack([transform(test.load(i)).numpy() for i in range(len(test))]).astype(np.float32)
    labels = np.array(test.labels)
    top1 = 100.0 * float((run_logits(session(onnx_path), images).argmax(axis=1) == labels).mean())
    assert top1 > 80, f"the fixture model did not learn ({top1:.1f}% top-1)"
    return PrecisionDigits(root, Path(onnx_path), images, labels, top1)


# --- a classifier as other tools export it (test_foreign_onnx, test_import_onnx) --------------------------------


def export_with_both_exporters(model: Any, size: int, legacy: Path, dynamo: Path) -> None:
    """`model` (`images` → `out`, dynamic batch) as torch's two exporters write it, unoptimized: the legacy one
    at opset 17 leaves Identity nodes and unfused BatchNormalization; the dynamo one without its optimizer leaves
    BatchNormalization and Shape/Expand/CastLike chains."""
    import warnings

    import torch

    example = (torch.zeros(2, 3, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(legacy), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["out"],
                          dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}},
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
        program = torch.onnx.export(model, example, dynamo=True, optimize=False, input_names=["images"],
                                    output_names=["out"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    external_data=False, verbose=False)
        program.save(str(dynamo))


def resnet20_engine(loaded: Any, precision: str = "fp32") -> Any:
    """A one-thread TorchEngine on a copy of a loaded CIFAR ResNet-20 (the engine casts its module in place)."""
    import copy

    from engines.torch_engine import TorchEngine

    return TorchEngine(copy.deepcopy(loaded.model), input_shape=(3, 32, 32), num_classes=10, precision=precision,
                       threads=1)


# --- a real Triton server (test_triton_server, test_serve) ------------------------------------------------------


@pytest.fixture(scope="session")
def triton_install():
    """The tritonserver of the nvidia-pytriton wheel (the serve extra); skips with the reason where there is none."""
    from resnet_deploy.errors import BackendUnavailable
    from resnet_deploy.serving.tritonserver import find_tritonserver

    try:
        return find_tritonserver()
    except BackendUnavailable as exc:
        pytest.skip(f"no Triton server here: {exc}")
