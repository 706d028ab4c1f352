"""The two training loaders and the evaluation batches (the data order is `trainer.data.BatchPlan`).

* Tensor loader: batches gathered and augmented on the device from a resident uint8 tensor.
* Worker loader: DataLoader workers decode and augment; each sample's randomness is its own seed, so the
  batches are the same whichever worker decodes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from resnet_deploy.data import ImageDataset
from trainer.augment import mix_seed, normalize, pca_lighting, random_crop_flip, seeded
from trainer.data import BatchPlan

# --- batches ---------------------------------------------------------------------------------------


def _stats(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


class TensorBatches:
    """Training batches gathered and augmented on the device from a resident uint8 tensor."""

    def __init__(  # noqa: PLR0913
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        plan: BatchPlan,
        *,
        device: torch.device,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        padding: int,
        channels_last: bool,
        seed: int,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.plan = plan
        self.device = device
        self.mean, self.std = _stats(mean, device), _stats(std, device)
        self.padding = padding
        self.channels_last = channels_last
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self._epoch: int | None = None
        self._order: torch.Tensor | None = None

    def get(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step = self.plan.position(iteration)
        if epoch != self._epoch:  # one host→device copy of the permutation per epoch
            self._order = self.plan.order(epoch).to(self.device)
            self._epoch = epoch
        assert self._order is not None
        rows = self._order[self.plan.slice_of(step)]
        x = normalize(self.images[rows], self.mean, self.std)
        x = random_crop_flip(x, self.padding, seeded(self.generator, self.seed, iteration, self.plan.rank, 0xA06))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[rows]

    def close(self) -> None:
        pass


class _KeyedDataset(torch.utils.data.Dataset):
    """Sample (position, seed) → augmented uint8 tensor: each sample's randomness is its own seed."""

    def __init__(self, dataset: ImageDataset, rows: list[int], transform: Callable) -> None:
        self.dataset, self.rows, self.transform = dataset, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = key
        row = self.rows[position]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.transform(self.dataset.load(row))
        return image, self.dataset.labels[row]


class _PlanBatchSampler:
    """Yields the keys of iterations [start, stop); the trainer moves the window one epoch at a time."""

    def __init__(self, plan: BatchPlan, seed: int) -> None:
        self.plan, self.seed = plan, seed
        self.start = self.stop = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield [(int(i), mix_seed(self.seed, iteration, int(i))) for i in self.plan.indices(iteration)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def train_transform(recipe_augmentation: str, size: int, padding: int, scale_range: tuple[int, int] | None,
                    resize_to: int | None) -> Callable:
    """Per-image augmentation in the workers, on uint8 (colour jitter included); PCA lighting is on the device."""
    from torchvision.transforms import v2

    if recipe_augmentation == "scale-crop-flip-colour":
        low, high = scale_range or (256, 480)
        return v2.Compose([
            v2.ToImage(),
            v2.RandomShortestSize(min_size=list(range(low, high + 1)), antialias=True),
            v2.RandomCrop(size, pad_if_needed=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        ])
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize_to or size, antialias=True),
        v2.CenterCrop(size),
        v2.RandomCrop(size, padding=padding),
        v2.RandomHorizontalFlip(),
    ])


class WorkerBatches:
    """Training batches decoded and augmented by DataLoader workers; normalized on the device."""

    def __init__(  # noqa: PLR0913
        self,
        dataset: ImageDataset,
        rows: list[int],
        plan: BatchPlan,
        transform: Callable,
        *,
        device: torch.device,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        workers: int,
        channels_last: bool,
        lighting_std: float,
        seed: int,
    ) -> None:
        self.plan, self.device, self.seed = plan, device, seed
        self.mean, self.std = _stats(mean, device), _stats(std, device)
        self.channels_last, self.lighting_std = channels_last, lighting_std
        self.sampler = _PlanBatchSampler(plan, seed)
        self.loader = torch.utils.data.DataLoader(
            _KeyedDataset(dataset, rows, transform),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self.generator = torch.Generator(device=device)
        self._iterator: Iterator | None = None
        self._next = -1

    def get(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iterator is None or iteration != self._next:
            epoch, _ = self.plan.position(iteration)
            self.sampler.start, self.sampler.stop = iteration, (epoch + 1) * self.plan.iters_per_epoch
            self._iterator = iter(self.loader)
        try:
            images, labels = next(self._iterator)
        except StopIteration:
            self._iterator = None
            return self.get(iteration)
        self._next = iteration + 1
        if self._next % self.plan.iters_per_epoch == 0:
            self._iterator = None  # the next epoch starts a new pass (persistent workers stay up)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        x = images.float().div_(255)
        if self.lighting_std:
            x = pca_lighting(x, self.lighting_std, seeded(self.generator, self.seed, iteration, self.plan.rank, 0x119))
        x = x.sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels

    def close(self) -> None:
        self._iterator = None
        del self.loader


# --- evaluation batches ----------------------------------------------------------------------------


def tensor_eval_batches(
    images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, rank: int, world_size: int,
    device: torch.device, mean: tuple[float, float, float], std: tuple[float, float, float], channels_last: bool,
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Each rank evaluates rows rank, rank + world, ... of a resident uint8 tensor."""
    shard_images = images[rank::world_size].to(device)
    shard_labels = labels[rank::world_size].to(device)
    mean_t, std_t = _stats(mean, device), _stats(std, device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, shard_images.shape[0], batch_size):
            x = normalize(shard_images[start:start + batch_size], mean_t, std_t)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, shard_labels[start:start + batch_size]

    return batches


class _RowsDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset, rows: list[int], transform: Callable) -> None:
        self.dataset, self.rows, self.transform = dataset, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        row = self.rows[position]
        return self.transform(self.dataset.load(row)), self.dataset.labels[row]


def worker_eval_batches(
    dataset: ImageDataset, rows: list[int], transform: Callable, *, batch_size: int, rank: int, world_size: int,
    device: torch.device, workers: int, channels_last: bool,
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The card's evaluation transform in worker processes (normalized there, as `validate` does)."""
    loader = torch.utils.data.DataLoader(
        _RowsDataset(dataset, rows[rank::world_size], transform),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(device, non_blocking=True)

    return batches
