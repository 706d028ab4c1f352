"""`last.pt`: everything needed to continue a run exactly, readable with `torch.load(weights_only=True)`.

The dict carries the trainer-checkpoint marker, the card JSON and the weights under "model", so
every `--checkpoint` flag of resnet-deploy accepts it too. RNG states of numpy and Python are
converted to tensors and lists, because the safe unpickler admits nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_deploy.atomic import atomic_path
from resnet_deploy.checkpoints import TRAINER_CHECKPOINT_FORMAT, torch_load_untrusted
from resnet_deploy.errors import UsageError


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [int(version), [int(v) for v in state], gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, values, gauss_next = state["python"]
    random.setstate((version, tuple(values), gauss_next))


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_training_state(path: Path, state: dict[str, Any]) -> Path:
    """Write the checkpoint atomically: a killed run keeps the previous `last.pt` intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": TRAINER_CHECKPOINT_FORMAT, **state}, tmp)
    return path


@dataclass
class ResumeState:
    path: Path
    data: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.data["position"]["iteration"])


def load_training_state(path: Path) -> ResumeState:
    if not path.is_file():
        raise UsageError(f"--resume: {path} does not exist (a run writes last.pt into its --output folder)")
    data = torch_load_untrusted(path)
    if not isinstance(data, dict) or data.get("format") != TRAINER_CHECKPOINT_FORMAT:
        raise UsageError(f"--resume: {path} is not a trainer checkpoint (no {TRAINER_CHECKPOINT_FORMAT!r} marker)")
    missing = [k for k in ("model", "optimizer", "scheduler", "position", "schedule", "config") if k not in data]
    if missing:
        raise UsageError(f"--resume: {path} lacks {', '.join(missing)}; it cannot continue a run")
    return ResumeState(path, data)
