"""The demo's embedded real data set: scikit-learn's handwritten digits, as an ImageFolder tree.

1,797 real 8x8 grey scans of the digits 0-9 (UCI ML hand-written digits, shipped inside
scikit-learn, so nothing is downloaded). They are upscaled to 32x32 RGB PNGs, the CIFAR input
size, and split stratified into `train/` and `test/` so every later step (train, calibrate,
validate) reads them the way it reads a user's own images.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_deploy.errors import UsageError

DIGIT_CLASSES = [f"digit_{i}" for i in range(10)]
MARKER = ".resnet-deploy-digits"


@dataclass(frozen=True)
class DigitsFolder:
    root: Path
    train_images: int
    test_images: int

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def test(self) -> Path:
        return self.root / "test"


def write_digits_imagefolder(root: str | Path, *, size: int = 32, test_fraction: float = 0.25,
                             seed: int = 0) -> DigitsFolder:
    """Write (once) `root/train/<digit>/*.png` and `root/test/<digit>/*.png`; reuse a complete earlier copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("the demo's embedded data set needs scikit-learn (pip install scikit-learn)") from None
    target = Path(root)
    marker = target / MARKER
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        test_mask[members[: round(len(members) * test_fraction)]] = True
    counts = DigitsFolder(target, int((~test_mask).sum()), int(test_mask.sum()))
    if marker.is_file() and marker.read_text().strip() == f"{size} {test_fraction} {seed}":
        return counts

    # Build in a temporary folder and move it into place: an interrupted demo leaves no half set.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            split = "test" if test_mask[index] else "train"
            folder = staging / split / DIGIT_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{index:04d}.png")
        (staging / MARKER).write_text(f"{size} {test_fraction} {seed}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return counts
