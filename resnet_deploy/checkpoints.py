"""Load any weights a user points `--checkpoint` at, safely, into a model plus its card.

Accepted: our model cards (`.safetensors` with card metadata), our trainer's checkpoints
(`last.pt`), and foreign PyTorch weights (`.pth/.pt/.th` or plain `.safetensors`) as a bare
`state_dict` or nested under `state_dict`/`model`/`model_state_dict`. Pickles are opened with
`torch.load(..., weights_only=True)`, so a file that would run code is refused and nothing runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import ModelCard, read_card, stamp_lineage
from resnet_deploy.errors import UsageError

# Our trainer's checkpoint is a dict with this marker; "card" holds the card JSON, "model" the weights.
TRAINER_CHECKPOINT_FORMAT = "resnet_deploy.trainer/1"
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
PICKLE_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    model: nn.Module
    card: ModelCard
    source: Path
    source_sha256: str
    kind: str  # "card", "trainer-checkpoint" or "foreign"


def parse_renames(pairs: Iterable[str]) -> list[tuple[str, str]]:
    """`--rename OLD=NEW` → [(OLD, NEW)]: prefix renames applied to foreign keys."""
    renames = []
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old:
            raise UsageError(f"--rename expects OLD=NEW (a key prefix), got {pair!r}")
        renames.append((old, new))
    return renames


def torch_load_untrusted(path: Path) -> Any:
    """`torch.load` that never unpickles arbitrary objects."""
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of plain pickles; the refusal below says what matters.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise UsageError(
                f"{path}: refused to load: the file holds Python objects other than tensors and plain "
                "containers, which could run code (loaded with weights_only=True). Re-save just the "
                "state_dict from a trusted environment."
            ) from None
        raise UsageError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # any parse failure of an untrusted file means "not a checkpoint"
        raise UsageError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in a loaded object: bare, or nested one level under a known key."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in NESTED_STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    raise UsageError(
        f"{path}: no state_dict found (expected a mapping of tensors, bare or under one of "
        f"{', '.join(NESTED_STATE_KEYS)})"
    )


def normalize_keys(
    state: Mapping[str, torch.Tensor], renames: Iterable[tuple[str, str]] = ()
) -> dict[str, torch.Tensor]:
    """Strip DataParallel/compile prefixes, then apply the user's prefix renames."""
    renames = list(renames)
    result = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        result[key] = value
    return result


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """`load_state_dict(strict=True)` with an error that lists what is missing, extra or mis-shaped."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        problems = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped))
        for label, keys in problems:
            if keys:
                shown = ", ".join(keys[:8]) + (f", … ({len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise UsageError(f"{source}: weights do not fit the architecture; " + "; ".join(parts)
                         + " (wrong --arch, or use --rename OLD=NEW for foreign key prefixes)")
    model.load_state_dict(state, strict=True)


def _infer_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    weight = state.get("fc.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    renames: Iterable[tuple[str, str]] = (),
    arch_options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a model card, trainer checkpoint or foreign weights; the model is in eval mode on the CPU."""
    source = Path(path)
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if source.is_dir():
        raise UsageError(f"{source}: is a folder, expected a weights file (.safetensors, .pt, .pth)")
    suffix = source.suffix.lower()
    digest = sha256_file(source)

    card: ModelCard | None = None
    kind = "foreign"
    if suffix == ".safetensors":
        card = read_card(source)
        from safetensors.torch import load_file

        state = load_file(str(source))
        kind = "card" if card else "foreign"
    elif suffix in PICKLE_SUFFIXES:
        obj = torch_load_untrusted(source)
        if isinstance(obj, Mapping) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
            card = ModelCard.from_json(str(obj["card"]))
            state = dict(obj["model"])
            kind = "trainer-checkpoint"
        else:
            state = extract_state_dict(obj, source)
    else:
        raise UsageError(
            f"{source}: unsupported weights file {suffix or '(no suffix)'}; expected .safetensors, "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )

    if card is not None:
        if arch is not None and arch != card.arch:
            raise UsageError(f"{source}: the card says {card.arch}, but {arch} was asked for")
        state = normalize_keys(state)
    else:
        if arch is None:
            raise UsageError(f"{source}: foreign weights carry no architecture; pass --arch NAME or --depth N")
        state = normalize_keys(state, renames)
        inferred = _infer_num_classes(state)
        n = num_classes or (len(class_names) if class_names else None) or inferred
        card = ModelCard.default_for(arch, num_classes=n, class_names=class_names, **(arch_options or {}))
        card = stamp_lineage(card, source_sha256=digest, source_file=source.name, imported=True)

    try:
        model = card.build_model()
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{source}: {exc}") from None
    load_state_strict(model, state, source)
    model.eval()
    if "source_sha256" not in card.lineage:
        card = dataclasses.replace(card, lineage={**card.lineage, "source_sha256": digest})
    return LoadedModel(model=model, card=card, source=source, source_sha256=digest, kind=kind)


def random_model(arch: str, *, num_classes: int | None = None, seed: int = 0, **arch_options: Any) -> LoadedModel:
    """Randomly initialized weights (for latency work); the card says so in its lineage."""
    try:
        card = ModelCard.default_for(arch, num_classes=num_classes, **arch_options)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    torch.manual_seed(seed)
    model = card.build_model().eval()
    card = stamp_lineage(card, random_weights=True, seed=seed)
    return LoadedModel(model=model, card=card, source=Path(f"<random {arch}>"), source_sha256="", kind="random")
