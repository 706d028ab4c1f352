"""The inputs checks run on: the one static-batch chunker, and the one sampler of check images (real or random)."""

from __future__ import annotations

import numpy as np


def batches_of(images: np.ndarray, batch: int, *, static: bool) -> list[np.ndarray]:
    """Split into batches; a static-batch model takes only full ones, so its last batch is filled by repetition
    (callers keep the first `len(images)` outputs)."""
    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    if static and chunks and len(chunks[-1]) < batch:
        last = chunks[-1]
        chunks[-1] = np.concatenate([last, np.repeat(last[:1], batch - len(last), axis=0)])
    return chunks
