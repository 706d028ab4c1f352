"""Load any weights a user points `--checkpoint` at, safely, into a model plus its card.

Accepted: our model cards (`.safetensors` with card metadata), our trainer's checkpoints
(`last.pt`), and foreign PyTorch weights (`.pth/.pt/.th/.ckpt` or plain `.safetensors`) as a bare
`state_dict` or nested under `state_dict`/`model`/`model_state_dict` (timm's `state_dict_ema` with
`use_ema`; Lightning's `state_dict` with its `model.`/`net.` attribute prefix). Pickles are opened
with `torch.load(..., weights_only=True)`, so a file that would run code is refused and nothing runs;
a TorchScript archive or a whole pickled `nn.Module` is refused with how to save a state_dict.

Weights load exactly when `Module.load_state_dict(strict=True)` would load them: torch's own rules
decide (BatchNorm fills a missing `num_batches_tracked` in state dicts saved before its version 2,
i.e. by PyTorch < 0.4.1 or without version metadata); our error then lists every missing,
unexpected and mis-shaped key at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import ModelCard, read_card, stamp_lineage
from resnet_deploy.errors import UsageError, first_line

# Our trainer's checkpoint is a dict with this marker; "card" holds the card JSON, "model" the weights.
TRAINER_CHECKPOINT_FORMAT = "resnet_deploy.trainer/1"
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
EMA_STATE_KEYS = ("state_dict_ema", "model_ema")  # timm's EMA weights (newer, older name)
# A Lightning module keeps the network under one attribute; stripped only when every key has it.
CONTAINER_PREFIXES = ("model.", "net.")
# timm's train.py saves its argparse arguments beside the weights; a Namespace only holds plain values.
SAFE_EXTRA_GLOBALS = (argparse.Namespace,)
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
PICKLE_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    model: nn.Module
    card: ModelCard
    source: Path
    source_sha256: str
    kind: str  # "card", "trainer-checkpoint" or "foreign"
    notes: list[str] = dataclasses.field(default_factory=list)  # what was recognised or chosen, for the user


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
    _refuse_torchscript(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            # torch warns about the pickle protocol of plain pickles; the refusal below says what matters.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise UsageError(_refusal(path)) from None
        raise UsageError(f"{path}: not a PyTorch checkpoint ({first_line(exc)})") from None
    except Exception as exc:  # any parse failure of an untrusted file means "not a checkpoint"
        raise UsageError(f"{path}: not a PyTorch checkpoint ({first_line(exc)})") from None


def _refuse_torchscript(path: Path) -> None:
    """A TorchScript archive is a zip with compiled code (`code/`, `constants.pkl`), not a state_dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        raise UsageError(
            f"{path}: a TorchScript archive (torch.jit.save), which holds code rather than a state_dict; in a "
            "trusted environment run `torch.save(torch.jit.load(PATH).state_dict(), 'weights.pth')` and import that"
        )


def _refusal(path: Path) -> str:
    """Why a weights_only load was refused, naming the Python objects found (read without running them)."""
    try:
        unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # old (non-zip) pickles and damaged files: the generic message is all we can say
        unsafe = []
    if any(name.startswith("torch.nn.modules.") for name in unsafe):
        return (f"{path}: a whole pickled nn.Module (torch.save(model)); unpickling it would run code, so it is "
                "refused. In a trusted environment save only its weights: "
                "`torch.save(model.state_dict(), 'weights.pth')`, and import that")
    named = f" (it names {', '.join(unsafe[:4])})" if unsafe else ""
    return (f"{path}: refused to load: the file holds Python objects other than tensors and plain containers"
            f"{named}, which could run code (loaded with weights_only=True). Re-save just the state_dict from a "
            "trusted environment.")


@dataclass
class FoundState:
    """The weights found in a loaded checkpoint, and what was chosen (for the user)."""

    state: Mapping[str, torch.Tensor]  # the loaded mapping itself: torch's `_metadata` (versions) stays on it
    key: str | None  # where it was nested; None for a bare state_dict
    notes: list[str] = dataclasses.field(default_factory=list)


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def extract_state_dict(obj: Any, path: Path, *, use_ema: bool = False) -> FoundState:
    """Find the tensors in a loaded object: bare, or nested one level under a known key (timm's EMA weights
    under `state_dict_ema`/`model_ema` when `use_ema`, or when they are the only weights)."""
    if _is_state(obj):
        if use_ema:
            raise UsageError(f"{path}: --use-ema: a bare state_dict holds no EMA weights")
        return FoundState(obj, None)
    if isinstance(obj, Mapping):
        ema_key = next((k for k in EMA_STATE_KEYS if _is_state(obj.get(k))), None)
        main_key = next((k for k in NESTED_STATE_KEYS if _is_state(obj.get(k))), None)
        if use_ema:
            if ema_key is None:
                raise UsageError(f"{path}: --use-ema: no EMA weights here (looked for {', '.join(EMA_STATE_KEYS)})")
            return FoundState(obj[ema_key], ema_key, [f"took the EMA weights ({ema_key!r})"])
        if main_key is not None:
            also = f"; the EMA weights ({ema_key!r}) are there too: --use-ema takes those" if ema_key else ""
            return FoundState(obj[main_key], main_key, [f"took {main_key!r}{also}"] if ema_key else [])
        if ema_key is not None:
            return FoundState(obj[ema_key], ema_key, [f"took the EMA weights ({ema_key!r}), the only weights here"])
    raise UsageError(
        f"{path}: no state_dict found (expected a mapping of tensors, bare or under one of "
        f"{', '.join(NESTED_STATE_KEYS + EMA_STATE_KEYS)})"
    )


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def container_prefix(state: Mapping[str, torch.Tensor]) -> str | None:
    """`model.`/`net.` when every key has it (a Lightning module's attribute); never a partial strip."""
    keys = [_strip_wrappers(k) for k in state]
    return next((p for p in CONTAINER_PREFIXES if keys and all(k.startswith(p) for k in keys)), None)


def normalize_keys(
    state: Mapping[str, torch.Tensor], renames: Iterable[tuple[str, str]] = (), *, strip: str | None = None
) -> dict[str, torch.Tensor]:
    """Strip DataParallel/compile prefixes (and `strip`, a container prefix), then apply the user's prefix
    renames. torch's per-module version metadata (`_metadata`) is renamed alongside, so its rules still apply."""
    renames = list(renames)

    def rename(key: str) -> str:
        key = _strip_wrappers(key)
        if strip and key.startswith(strip):
            key = _strip_wrappers(key[len(strip):])
        for old, new in renames:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    result: dict[str, torch.Tensor] = OrderedDict((rename(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # keyed by module prefix without the dot ("" is the root)
        renamed = OrderedDict()
        for prefix, value in metadata.items():
            key = rename(prefix + ".") if prefix else ""
            renamed[key[:-1] if key.endswith(".") else key] = value
        result._metadata = renamed  # type: ignore[attr-defined]
    return result


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load exactly when `load_state_dict(strict=True)` would: torch's own rules decide what may be absent
    (BatchNorm fills a missing `num_batches_tracked` in state dicts without version 2 metadata). Otherwise
    one error lists what is missing, extra or mis-shaped (the model is then partly loaded: discard it)."""
    expected = model.state_dict()
    mis_shaped = {k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)}
    fitting: dict[str, torch.Tensor] = OrderedDict((k, v) for k, v in state.items() if k not in mis_shaped)
    if hasattr(state, "_metadata"):
        fitting._metadata = state._metadata  # type: ignore[attr-defined]
    result = model.load_state_dict(fitting, strict=False)
    missing = [k for k in result.missing_keys if k not in mis_shaped]
    unexpected = list(result.unexpected_keys)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected if k in mis_shaped]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", … ({len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise UsageError(f"{source}: weights do not fit the architecture; " + "; ".join(parts)
                         + " (wrong --arch, or use --rename OLD=NEW for foreign key prefixes)")


def _infer_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    weight = state.get("fc.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


@dataclass
class _Weights:
    state: Mapping[str, torch.Tensor]
    card: ModelCard | None
    kind: str
    notes: list[str]


def _read_weights(source: Path, *, use_ema: bool) -> _Weights:
    """The tensors of a weights file, its card if it carries one, and what was chosen."""
    suffix = source.suffix.lower()
    if suffix == ".safetensors":
        card = read_card(source)
        from safetensors.torch import load_file

        if card is not None and use_ema:
            raise UsageError(f"{source}: --use-ema applies to foreign checkpoints; this is a model card")
        notes = [] if card else ["plain safetensors without a resnet-deploy card: foreign weights"]
        return _Weights(load_file(str(source)), card, "card" if card else "foreign", notes)
    if suffix in PICKLE_SUFFIXES:
        obj = torch_load_untrusted(source)
        if isinstance(obj, Mapping) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
            if use_ema:
                raise UsageError(f"{source}: --use-ema applies to foreign checkpoints; this is our trainer's")
            return _Weights(dict(obj["model"]), ModelCard.from_json(str(obj["card"])), "trainer-checkpoint", [])
        found = extract_state_dict(obj, source, use_ema=use_ema)
        return _Weights(found.state, None, "foreign", found.notes)
    raise UsageError(
        f"{source}: unsupported weights file {suffix or '(no suffix)'}; expected .safetensors, "
        f"{', '.join(PICKLE_SUFFIXES)}"
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    renames: Iterable[tuple[str, str]] = (),
    arch_options: dict[str, Any] | None = None,
    use_ema: bool = False,
) -> LoadedModel:
    """Load a model card, trainer checkpoint or foreign weights; the model is in eval mode on the CPU."""
    source = Path(path)
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if source.is_dir():
        raise UsageError(f"{source}: is a folder, expected a weights file (.safetensors, .pt, .pth)")
    digest = sha256_file(source)
    weights = _read_weights(source, use_ema=use_ema)
    card, notes = weights.card, list(weights.notes)

    if card is not None:
        if arch is not None and arch != card.arch:
            raise UsageError(f"{source}: the card says {card.arch}, but {arch} was asked for")
        state = normalize_keys(weights.state)
    else:
        if arch is None:
            what = ("plain safetensors weights (no resnet-deploy card in their metadata)"
                    if source.suffix.lower() == ".safetensors" else "foreign weights")
            raise UsageError(f"{source}: {what} carry no architecture; pass --arch NAME or --depth N")
        strip = container_prefix(weights.state)
        if strip:
            notes.append(f"stripped the {strip!r} prefix every key had (a Lightning module's attribute)")
        state = normalize_keys(weights.state, renames, strip=strip)
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
    return LoadedModel(model=model, card=card, source=source, source_sha256=digest, kind=weights.kind, notes=notes)


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
