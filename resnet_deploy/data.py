"""Labelled image data: ImageFolder trees and CIFAR-10/100 python batches, plus the eval transform.

`open_dataset(DIR)` accepts a split folder itself (class subfolders), a root holding `test/`,
`val/` or `train/`, or a `cifar-10-batches-py` / `cifar-100-python` folder (or a root holding one).
CIFAR batches are pickles; they are read with an unpickler that only admits numpy arrays, so
nothing arbitrary is ever unpickled.
"""

from __future__ import annotations

import io
import pickle
import random
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_deploy.card import Preprocessing
from resnet_deploy.errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"})
SPLIT_PREFERENCE = ("test", "val", "train")
CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")


class BadImageError(UsageError):
    """An image file that cannot be decoded; carries its path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read image ({reason}); fix or remove it, or pass --skip-bad")
        self.path = path
        self.reason = reason


@dataclass
class ImageDataset:
    """A list of labelled images. `samples[i]` is a file path (ImageFolder) or a row index (CIFAR)."""

    root: Path
    kind: str  # "imagefolder", "cifar" or "images" (unlabelled)
    split: str | None
    class_names: list[str]
    samples: list[str | int]
    labels: list[int]
    arrays: np.ndarray | None = field(default=None, repr=False)  # CIFAR: uint8 (N, 32, 32, 3)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        split = f" ({self.split})" if self.split else ""
        return f"{self.root}{split}: {len(self)} images, {self.num_classes} classes, {self.kind}"

    def load(self, index: int) -> Image.Image:
        """Decode one image as RGB; raises BadImageError with its path when it cannot be read."""
        sample = self.samples[index]
        if self.arrays is not None:
            return Image.fromarray(self.arrays[int(sample)], mode="RGB")
        path = str(sample)
        try:
            with warnings.catch_warnings():
                # PIL only warns above MAX_IMAGE_PIXELS (and raises above twice that): either way it is an
                # image too large to be a real sample, so a bad image, not a raw warning on the terminal.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    return image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImageError(path, f"too large, a possible decompression bomb: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BadImageError(path, str(exc) or type(exc).__name__) from None

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        return ImageDataset(
            root=self.root,
            kind=self.kind,
            split=self.split,
            class_names=self.class_names,
            samples=[self.samples[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            arrays=self.arrays,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.root),
            "kind": self.kind,
            "split": self.split,
            "images": len(self),
            "classes": self.num_classes,
            "class_names": self.class_names,
        }


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_split(root: Path, split: str | None) -> tuple[Path, str | None]:
    """The folder that holds the class subfolders, and the split's name if one was chosen."""
    if split is not None:
        folder = root / split
        if not folder.is_dir():
            raise UsageError(f"{root}: no split folder {split!r}")
        return folder, split
    for name in SPLIT_PREFERENCE:
        if (root / name).is_dir():
            return root / name, name
    return root, None


def open_dataset(path: str | Path, split: str | None = None) -> ImageDataset:
    """Open a labelled data set; `split` picks `train`/`val`/`test` (default: test, val, then train)."""
    root = Path(path)
    if not root.exists():
        raise UsageError(f"{root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder (expected an ImageFolder tree or CIFAR python batches)")
    cifar = _find_cifar(root)
    if cifar is not None:
        return _open_cifar(cifar, split)
    folder, split_name = resolve_split(root, split)
    classes = _class_dirs(folder)
    if not classes:
        raise UsageError(
            f"{folder}: no class subfolders (expected <class>/<image> files, a train/val/test split, "
            "or cifar-10-batches-py)"
        )
    samples: list[str | int] = []
    labels: list[int] = []
    for label, class_dir in enumerate(classes):
        for image in sorted(class_dir.rglob("*")):
            if _is_image(image):
                samples.append(str(image))
                labels.append(label)
    if not samples:
        raise UsageError(f"{folder}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageDataset(folder, "imagefolder", split_name, [c.name for c in classes], samples, labels)


def calibration_folder(folder: str | Path) -> Path:
    """The folder to draw from: a data set root with a `train/` split calibrates on it, never on test images."""
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{root}: no such calibration folder")
    if (root / "train").is_dir():
        return root / "train"
    return root


def open_image_folder_unlabelled(path: str | Path) -> ImageDataset:
    """Any folder of images, with or without class subfolders (calibration needs no labels)."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    cifar = _find_cifar(root)
    if cifar is not None:
        return _open_cifar(cifar, "train")
    images = sorted(p for p in root.rglob("*") if _is_image(p))
    if not images:
        raise UsageError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    # Keep class structure when there is one so sampling can be spread evenly across classes.
    parents = sorted({p.parent for p in images})
    index = {parent: i for i, parent in enumerate(parents)}
    return ImageDataset(
        root, "images", None, [p.name for p in parents], [str(p) for p in images], [index[p.parent] for p in images]
    )


# --- CIFAR python batches ------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admit only what CIFAR batches contain: numpy arrays, lists, dicts, strings and numbers."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}")


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        raw = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a CIFAR python batch ({exc})") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _find_cifar(root: Path) -> Path | None:
    if (root / "batches.meta").is_file() or ((root / "meta").is_file() and (root / "test").is_file()):
        return root
    for name in CIFAR_FOLDERS:
        if (root / name).is_dir():
            return root / name
    return None


def _open_cifar(folder: Path, split: str | None) -> ImageDataset:
    split = split or "test"
    if split not in ("train", "test"):
        raise UsageError(f"{folder}: CIFAR python batches have splits train and test, not {split!r}")
    if (folder / "batches.meta").is_file():  # CIFAR-10
        meta = _read_batch(folder / "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
        files = [folder / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [folder / "test_batch"]
        label_key = "labels"
    else:  # CIFAR-100 (fine labels)
        meta = _read_batch(folder / "meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in meta["fine_label_names"]]
        files = [folder / split]
        label_key = "fine_labels"
    data, labels = [], []
    for file in files:
        if not file.is_file():
            raise UsageError(f"{folder}: missing CIFAR batch {file.name}")
        batch = _read_batch(file)
        data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(int(v) for v in batch[label_key])
    arrays = np.ascontiguousarray(np.concatenate(data))
    return ImageDataset(folder, "cifar", split, names, list(range(len(arrays))), labels, arrays)


# --- sampling and transforms -----------------------------------------------------------------------


def stratified_indices(labels: Sequence[int], count: int, seed: int = 0) -> list[int]:
    """`count` indices drawn evenly across classes (round-robin over shuffled classes), fixed seed."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[int] = []
    queues = [by_class[c] for c in sorted(by_class)]
    position = 0
    while len(chosen) < min(count, len(labels)):
        for queue in queues:
            if position < len(queue) and len(chosen) < count:
                chosen.append(queue[position])
        position += 1
    return sorted(chosen)


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], Any]:
    """The card's evaluation transform: resize shorter side, centre crop, to float, normalize."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(pre.interpolation)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(pre.resize_size or pre.input_size, interpolation=interpolation, antialias=True),
        v2.CenterCrop(pre.input_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ])


def sample_images(dataset: ImageDataset, pre: Preprocessing, count: int, seed: int) -> np.ndarray:
    """`count` images of `dataset` (evenly across its classes, fixed seed) through the card's eval transform, as one
    float32 NCHW array; an unreadable image is one error naming it."""
    return sample_labelled(dataset, pre, count, seed)[0]


def sample_labelled(dataset: ImageDataset, pre: Preprocessing, count: int, seed: int,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`sample_images` and the labels of the same images (int64)."""
    transform = eval_transform(pre)
    indices = stratified_indices(dataset.labels, count, seed)
    arrays = []
    for index in indices:
        try:
            arrays.append(transform(dataset.load(index)).numpy())
        except BadImageError as exc:
            raise UsageError(f"{exc.path}: cannot read this image; fix or remove it") from None
    labels = np.asarray([dataset.labels[i] for i in indices], dtype=np.int64)
    return np.stack(arrays).astype(np.float32), labels


def labels_as_card_classes(dataset: ImageDataset, folder_labels: Sequence[int], class_names: Sequence[str] | None,
                           ) -> np.ndarray | None:
    """`folder_labels` (indices of the dataset's class folders) as indices of the card's `class_names`, when the
    folders are exactly the card's classes; None otherwise (an unlabelled folder, or other classes)."""
    names = list(class_names or [])
    if len(names) < 2 or sorted(dataset.class_names) != sorted(names):
        return None
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[dataset.class_names[label]] for label in folder_labels], dtype=np.int64)


def check_classes(dataset: ImageDataset, class_names: Sequence[str], artifact: str) -> None:
    """Refuse a data set whose classes disagree with the artifact's card (count, then names), or with one
    class only: every prediction would be right, and top-1 100 % would mean nothing."""
    if dataset.num_classes < 2:
        raise UsageError(f"{dataset.root}: {dataset.num_classes} class ({', '.join(dataset.class_names)}); "
                         "accuracy needs at least two classes (one subfolder per class)")
    if dataset.num_classes != len(class_names):
        raise UsageError(
            f"{artifact}: the model has {len(class_names)} classes but {dataset.root} has "
            f"{dataset.num_classes}; point --data at the data set the model was trained for"
        )
    placeholder = all(name == f"class_{i}" for i, name in enumerate(class_names))
    if not placeholder and list(class_names) != list(dataset.class_names):
        pairs = enumerate(zip(class_names, dataset.class_names, strict=True))
        differing = [f"{i}: {_two_names(a, b)}" for i, (a, b) in pairs if a != b]
        hint = ""
        if any(_same_but_form(a, b) for a, b in zip(class_names, dataset.class_names, strict=True)):
            hint = ("; some differ only in Unicode normal form (the same letters, composed or decomposed): rename "
                    "the folders, or the card's names, to one form (NFC)")
        raise UsageError(
            f"{artifact}: class names differ from {dataset.root} (model vs data: {', '.join(differing[:5])}){hint}"
        )


def _same_but_form(a: str, b: str) -> bool:
    return a != b and unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def _two_names(a: str, b: str) -> str:
    """Two differing names as the user can tell them apart: names that print alike (Unicode normal forms)
    are shown as escapes, with the form of each."""
    if not _same_but_form(a, b):
        return f"{a!r} vs {b!r}"
    return f"{ascii(a)} ({_form(a)}) vs {ascii(b)} ({_form(b)})"


def _form(name: str) -> str:
    for form in ("NFC", "NFD"):
        if unicodedata.normalize(form, name) == name:
            return form
    return "mixed form"
