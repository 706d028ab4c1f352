"""Batched decoding for evaluation (validate): decode each image once, apply every distinct transform.

Also the paper's ten-crop test view. Decoding runs in DataLoader worker processes while the main process
runs inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from resnet_deploy.card import Preprocessing
from resnet_deploy.data import BadImageError, ImageDataset
from resnet_deploy.errors import UsageError


def ten_crop_problem(pre: Preprocessing) -> str | None:
    """Why the paper's ten-crop view cannot be taken with this preprocessing; None when it can.

    The ten crops (Sec. 3.4) are the corners and centre of an image resized *larger* than the crop
    (ImageNet: 256 → 224). A card without a larger resize size (CIFAR: 32×32 images, 32-px input) has
    no room for corners: they would have to come from zero padding, which the paper never evaluates
    with and which costs accuracy. The paper tests CIFAR on "the single view of the original 32×32
    image" (Sec. 4.2), which is what validate does without --ten-crop.
    """
    if pre.resize_size and pre.resize_size > pre.input_size:
        return None
    resize = f"to {pre.resize_size} px" if pre.resize_size else "to the input size itself"
    return (f"ten-crop takes the corners and centre of an image resized larger than the {pre.input_size}-px crop, "
            f"but this card resizes images {resize} (CIFAR-style): there are no corners to take without zero "
            f"padding, which the paper never evaluates with; it evaluates such models on a single view of the "
            f"{pre.input_size}×{pre.input_size} image (He et al. 2016, Sec. 4.2): "
            "drop --ten-crop")


class TenCrop:
    """The paper's 10-crop test view (Sec. 3.4): the four corners and the centre of the image resized to the
    card's resize size, plus their horizontal flips, each of the card's input size, as one (10, C, H, W)
    tensor. Refused (UsageError, see `ten_crop_problem`) for a card whose images are not resized larger
    than the crop: there is nothing to take corners from without inventing pixels.
    """

    def __init__(self, pre: Preprocessing) -> None:
        import torch
        from torchvision.transforms import InterpolationMode, v2

        problem = ten_crop_problem(pre)
        if problem is not None:
            raise UsageError(problem)
        self.size = pre.input_size
        self._before = v2.Compose([
            v2.ToImage(),
            v2.Resize(pre.resize_size, interpolation=InterpolationMode(pre.interpolation), antialias=True),
        ])
        self._after = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])

    def __call__(self, image: Image.Image) -> Any:
        import torch
        from torchvision.transforms.v2 import functional as F

        crops = F.ten_crop(self._before(image), [self.size, self.size])
        return self._after(torch.stack(crops))


@dataclass
class ViewBatch:
    """One batch: dataset positions, labels, one float32 tensor per transform (N, C, H, W) or
    (N, 10, C, H, W) with ten-crop, and the (path, reason) of images that could not be decoded."""

    indices: Any
    labels: Any
    views: list[Any]
    bad: list[tuple[str, str]]


class DecodedViews:
    """A map-style dataset for torch's DataLoader: decode image i once, return every transform of it.

    A corrupt image is returned as (path, reason) instead of raised, so the main process decides
    whether to fail or skip (an exception raised in a worker loses its type and path)."""

    def __init__(self, dataset: ImageDataset, transforms: Sequence[Callable[[Image.Image], Any]]) -> None:
        self.dataset = dataset
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, int, tuple[Any, ...] | None, tuple[str, str] | None]:
        label = self.dataset.labels[index]
        try:
            image = self.dataset.load(index)
        except BadImageError as exc:
            return index, label, None, (exc.path, exc.reason)
        return index, label, tuple(transform(image) for transform in self.transforms), None


def collate_views(items: Sequence[tuple[int, int, tuple[Any, ...] | None, tuple[str, str] | None]]) -> ViewBatch:
    import torch

    good = [item for item in items if item[2] is not None]
    bad = [item[3] for item in items if item[3] is not None]
    views = [torch.stack([item[2][v] for item in good]) for v in range(len(good[0][2]))] if good else []
    return ViewBatch(
        indices=torch.tensor([item[0] for item in good], dtype=torch.int64),
        labels=torch.tensor([item[1] for item in good], dtype=torch.int64),
        views=views,
        bad=bad,
    )


def default_workers() -> int:
    """Decoding processes: one fewer than the cores (inference keeps the rest), at most 4, 0 on one core."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def iterate_views(
    dataset: ImageDataset,
    transforms: Sequence[Callable[[Image.Image], Any]],
    *,
    batch_size: int,
    workers: int | None = None,
) -> Any:
    """Batches of every transform of the same images, in data set order, decoded in `workers` processes."""
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else workers
    return DataLoader(
        DecodedViews(dataset, transforms),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_views,
        prefetch_factor=4 if workers > 0 else None,
    )
