"""Labelled images for `bench --accuracy`: each artifact's images go through its own card's preprocessing (one
decode per distinct preprocessing contract), after its classes are checked against the data set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.errors import UsageError

DEFAULT_ACCURACY_IMAGES = 1000
ACCURACY_SEED = 0  # the same images for every artifact, run after run


def labelled_images(data: Path, count: int) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """For a bench case: `count` images of `data` (evenly across classes) through the case artifact's card."""
    from resnet_deploy.artifacts import artifact_card
    from resnet_deploy.data import check_classes, open_dataset, sample_labelled

    dataset = open_dataset(data)
    decoded: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    def for_case(case: Any) -> tuple[np.ndarray, np.ndarray]:
        if case.artifact is None:
            raise UsageError("--accuracy measures trained artifacts; give their paths instead of --depth/--arch")
        card = artifact_card(case.artifact)
        check_classes(dataset, card.class_names, case.artifact)
        if card.preprocessing not in decoded:
            decoded[card.preprocessing] = sample_labelled(dataset, card.preprocessing, count, ACCURACY_SEED)
        return decoded[card.preprocessing]

    return for_case
