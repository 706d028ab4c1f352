"""Training data: splits, the data order, and decoding once (the loaders are in `trainer.loaders`).

* Small fixed-size data (CIFAR-like): every image is decoded ONCE into a uint8 tensor (cached on disk,
  keyed by the file list, so 50k JPEGs are not decoded again next run), kept on the training device,
  and batches are gathered and augmented there as tensor operations. The GPU never waits on Python.
* Large data (ImageNet-like): worker processes decode and augment, pinned memory, persistent workers.

Both draw batches from one `BatchPlan`: a per-epoch permutation seeded by (seed, epoch), cut into
global batches, each rank taking its slice. Batch `i` is a pure function of (seed, i), which is what
makes `--resume` exact and keeps DDP ranks disjoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnet_deploy.atomic import atomic_path
from resnet_deploy.data import BadImageError, ImageDataset, open_dataset
from resnet_deploy.errors import UsageError
from trainer.augment import mix_seed

CACHE_VERSION = 1
TENSOR_LOADER_LIMIT_BYTES = 16 << 30  # beyond this, decoded images do not belong in one tensor
Progress = Callable[[int], None]


# --- splits ----------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The training split (all of it, plus which rows train and which are held out) and the test split."""

    root: Path
    train: ImageDataset
    train_rows: list[int]
    holdout_rows: list[int]  # empty unless --val-split
    test: ImageDataset
    test_split: str
    test_rows: list[int] | None = None  # None: every test image; fewer after --skip-bad
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images

    @property
    def test_indices(self) -> list[int]:
        return list(range(len(self.test))) if self.test_rows is None else self.test_rows

    def without(self, bad_train: set[int], bad_test: set[int], skipped: list[tuple[str, str]]) -> TrainData:
        """The same splits less the unreadable images (`--skip-bad`)."""
        return TrainData(self.root, self.train, [r for r in self.train_rows if r not in bad_train],
                         [r for r in self.holdout_rows if r not in bad_train], self.test, self.test_split,
                         [r for r in self.test_indices if r not in bad_test], self.skipped + skipped)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def eval_split(self) -> str:
        return "holdout" if self.holdout_rows else self.test_split

    def describe(self) -> str:
        held = f" ({len(self.holdout_rows)} held out for validation)" if self.holdout_rows else ""
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return (f"{self.root}: {len(self.train_rows)} training images{held}, {len(self.test_indices)} "
                f"{self.test_split} images, {len(self.class_names)} classes ({self.train.kind}){skipped}")


def open_train_data(root: str | Path, *, val_split: int = 0, seed: int = 0) -> TrainData:
    """`DIR/train` + `DIR/val` or `DIR/test` (ImageFolder), or CIFAR-10/100 python batches."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--data {root}: no such folder (expected DIR/train/<class>/... and DIR/val or DIR/test)")
    try:
        train = open_dataset(root, split="train")
    except UsageError as exc:
        if "no split folder" not in str(exc):
            raise
        raise UsageError(f"--data {root}: no train/ folder; expected DIR/train/<class>/<image> and "
                         "DIR/val or DIR/test, or CIFAR python batches") from None
    test_split = "test"
    if train.kind == "cifar":
        test = open_dataset(root, split="test")
    else:
        names = [name for name in ("val", "test") if (root / name).is_dir()]
        if not names:
            raise UsageError(f"--data {root}: no val/ or test/ folder beside train/ to evaluate on")
        test_split = names[0]
        test = open_dataset(root, split=test_split)
    if test.class_names != train.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        raise UsageError(
            f"--data {root}: train/ and {test_split}/ have different classes "
            f"(only in train: {', '.join(only_train[:5]) or '-'}; "
            f"only in {test_split}: {', '.join(only_test[:5]) or '-'})"
        )
    if len(train.class_names) < 2:
        raise UsageError(f"--data {root}: {len(train.class_names)} class ({', '.join(train.class_names)}); a "
                         "classifier needs at least two classes (one class scores 100 % and learns nothing)")
    rows = list(range(len(train)))
    holdout: list[int] = []
    if val_split:
        if not 0 < val_split < len(train):
            raise UsageError(f"--val-split {val_split}: must be between 1 and {len(train) - 1} images")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(seed, 0x5B1)))
        holdout = sorted(order[:val_split].tolist())
        rows = sorted(order[val_split:].tolist())
    return TrainData(root, train, rows, holdout, test, test_split)


def synthetic_train_data(num_classes: int, size: int, count: int, *, seed: int = 0) -> TrainData:
    """Random pixels and labels, as if decoded already: the training throughput without any data set."""
    generator = torch.Generator().manual_seed(mix_seed(seed, 0x5E7))
    pixels = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator).numpy()
    labels = torch.randint(0, num_classes, (count,), generator=generator).tolist()
    names = [f"class_{i}" for i in range(num_classes)]
    train = ImageDataset(Path("synthetic"), "synthetic", "train", names, list(range(count)), labels, pixels)
    test = train.subset(range(min(count, 512)))
    return TrainData(Path("synthetic"), train, list(range(count)), [], test, "test")


# --- the data order --------------------------------------------------------------------------------


@dataclass
class BatchPlan:
    """Which rows each rank trains on at each iteration; the last partial batch of an epoch is dropped."""

    num_samples: int
    per_rank: int
    world_size: int
    rank: int
    seed: int
    _cache: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size

    @property
    def iters_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def order(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0xDA7A))
            self._cache = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cache[1]

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, step within the epoch)."""
        return divmod(iteration, self.iters_per_epoch)

    def slice_of(self, step: int) -> slice:
        start = step * self.global_batch + self.rank * self.per_rank
        return slice(start, start + self.per_rank)

    def indices(self, iteration: int) -> torch.Tensor:
        epoch, step = self.position(iteration)
        return self.order(epoch)[self.slice_of(step)]


# --- decoding once into a tensor -------------------------------------------------------------------


def default_cache_dir() -> Path:
    if os.environ.get("RESNET_DEPLOY_CACHE"):
        return Path(os.environ["RESNET_DEPLOY_CACHE"]) / "decoded"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnet-deploy" / "decoded"


def cache_key(dataset: ImageDataset, size: int) -> str:
    """Identifies the decoded tensor: every file's path, size and mtime, the labels and the image size."""
    # os.fsencode: file names are bytes to the OS; a non-UTF-8 name is a surrogate-escaped str here.
    digest = hashlib.sha256(b"v%d|%d|%s|" % (CACHE_VERSION, size, os.fsencode(dataset.root.resolve())))
    for sample, label in zip(dataset.samples, dataset.labels, strict=True):
        stat = os.stat(sample)
        digest.update(b"%s|%d|%d|%d\n" % (os.fsencode(sample), stat.st_size, stat.st_mtime_ns, label))
    return digest.hexdigest()[:32]


def _decode_one(dataset: ImageDataset, index: int, size: int) -> np.ndarray:
    image = dataset.load(index)
    if image.size != (size, size):
        # The evaluation contract of a card without resize: shorter side to `size`, centre crop.
        from torchvision.transforms.v2 import functional as F

        tensor = F.center_crop(F.resize(F.to_image(image), size, antialias=True), [size, size])
        return tensor.permute(1, 2, 0).numpy()
    return np.asarray(image, dtype=np.uint8)


@dataclass
class DecodedImages:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    cache_file: Path | None = None
    from_cache: bool = False
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # index → (path, reason), with skip_bad


def decode_images(
    dataset: ImageDataset,
    size: int,
    *,
    cache_dir: Path | None,
    threads: int = 2,
    progress: Progress | None = None,
    skip_bad: bool = False,
) -> DecodedImages:
    """All of `dataset` as one uint8 tensor, decoded once and cached as `.npz` under `cache_dir`.

    With `skip_bad`, unreadable images stay black and are listed in `bad`; such a decode is not cached,
    so a later run without `--skip-bad` still names the file."""
    labels = torch.tensor(dataset.labels, dtype=torch.int64)
    if dataset.arrays is not None:  # CIFAR batches are already pixels
        arrays = dataset.arrays[np.asarray(dataset.samples, dtype=np.int64)]
        images = torch.from_numpy(np.ascontiguousarray(arrays.transpose(0, 3, 1, 2)))
        if size != images.shape[-1]:
            from torchvision.transforms.v2 import functional as F

            images = F.center_crop(F.resize(images, size, antialias=True), [size, size])
        return DecodedImages(images, labels)

    cache_file = cache_dir / f"{cache_key(dataset, size)}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as data:
                cached = torch.from_numpy(data["images"].copy())
            if cached.shape == (len(dataset), 3, size, size):
                return DecodedImages(cached, labels, cache_file, from_cache=True)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is decoded again and overwritten

    pixels = np.zeros((len(dataset), size, size, 3), dtype=np.uint8)
    bad: dict[int, tuple[str, str]] = {}

    def work(index: int) -> int:
        try:
            pixels[index] = _decode_one(dataset, index, size)
        except BadImageError as exc:
            if not skip_bad:
                raise
            bad[index] = (exc.path, exc.reason)
        return index

    # PIL releases the GIL while decoding, so threads overlap file reads and decoding.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, _ in enumerate(pool.map(work, range(len(dataset)), chunksize=256), start=1):
            if progress is not None and (done % 1024 == 0 or done == len(dataset)):
                progress(done)
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    if cache_file is not None and not bad:
        try:
            with atomic_path(cache_file) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, images=images.numpy())
        except OSError:
            cache_file = None  # a read-only cache folder only costs the next run a decode
    return DecodedImages(images, labels, cache_file if not bad else None, from_cache=False, bad=bad)


def find_bad_images(dataset: ImageDataset, rows: list[int], *, threads: int = 2) -> dict[int, tuple[str, str]]:
    """Rows whose image cannot be decoded (for `--skip-bad` with worker loaders, before the data order is fixed)."""
    def check(row: int) -> tuple[int, tuple[str, str] | None]:
        try:
            dataset.load(row)
        except BadImageError as exc:
            return row, (exc.path, exc.reason)
        return row, None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return {row: found for row, found in pool.map(check, rows, chunksize=256) if found is not None}


def channel_stats(images_u8: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 images, scaled to [0, 1]."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images_u8.split(4096):
        values = chunk.to(torch.float64).div_(255)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square().sum(dim=(0, 2, 3))
    count = images_u8.shape[0] * images_u8.shape[2] * images_u8.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)  # type: ignore[return-value]


def tensor_bytes(count: int, size: int) -> int:
    return count * 3 * size * size
