"""The inputs checks run on: the one static-batch chunker, and the one sampler of check images (real or random)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from resnet_deploy.card import Preprocessing


def batches_of(images: np.ndarray, batch: int, *, static: bool) -> list[np.ndarray]:
    """Split into batches; a static-batch model takes only full ones, so its last batch is filled by repetition
    (callers keep the first `len(images)` outputs)."""
    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    if static and chunks and len(chunks[-1]) < batch:
        last = chunks[-1]
        chunks[-1] = np.concatenate([last, np.repeat(last[:1], batch - len(last), axis=0)])
    return chunks


def random_images(shape: tuple[int, ...] | list[int], *, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Standard-normal float32 inputs of `shape` (NCHW): what a check runs on when it has no real images (its
    logits carry no accuracy meaning). `seed` may be a Generator, to draw several batches from one stream."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def images_or_random(images: np.ndarray | None, shape: tuple[int, ...], *, count: int,
                     seed: int = 0) -> tuple[np.ndarray, str]:
    """The check images given (float32), else `count` random ones of `shape` (C, H, W); and which: "images" or
    "random" (a gate has nothing to judge on random inputs)."""
    if images is not None:
        return images.astype(np.float32, copy=False), "images"
    return random_images((count, *shape), seed=seed), "random"


def folder_images(folder: str | Path, pre: Preprocessing, count: int, seed: int, *,
                  class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` real check images of `folder` (its `train/` split when it has one; evenly across class subfolders,
    fixed seed) through the card's eval transform, and their labels when the class subfolders are `class_names`
    (the card's classes; None: no labels)."""
    from resnet_deploy.data import (
        calibration_folder,
        labels_as_card_classes,
        open_image_folder_unlabelled,
        sample_labelled,
    )

    dataset = open_image_folder_unlabelled(calibration_folder(folder))
    images, folder_labels = sample_labelled(dataset, pre, count, seed)
    return images, labels_as_card_classes(dataset, folder_labels, class_names)
