"""The registry: one `Backend` declaration per runtime, one `Precision` per precision, read by every table.

Build (targets, `--target auto`, the TensorRT-only flags), artifacts (suffix → backend, the manifest format,
`open_engine`), bench (backends, precision skips, extras), the environment's versions, gates, inspect,
Triton serving and the demo ask this module instead of keeping their own dicts. Declarations live in
`backends.py` and `precisions.py`; their types in `spec.py`. Nothing heavy is imported here.

What the form takes from three projects that solve the same problem:
- timm's model registry (`register_model`, `list_models`, `model_entrypoint`): one name-keyed table filled
  by declarations next to the code, queried by name and listed in a stable order, so scripts never keep
  their own list. Unlike timm, entries are data (frozen dataclasses), not decorated functions, so a
  listing needs no import of the runtime, and a test can check every field of every entry.
- optimum's exporters (`TasksManager`, one `OnnxConfig` per model type with its opset, tolerance and
  minimum versions): capabilities declared as class-level data, and implementations named by
  "module:attribute" strings resolved lazily, so a missing backend library never breaks the listing.
- Polygraphy's runner/loader split (`BaseLoader` callables that defer work; runners with
  activate/infer/deactivate): the declaration only says how to open (the `opener`, a loader that runs
  when called); the opened object is an `engines.base.Engine` meeting one contract, which
  tests/test_engine_contract.py runs over every registered backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_deploy.registry.backends import BACKENDS
from resnet_deploy.registry.precisions import PRECISIONS
from resnet_deploy.registry.spec import DEVICES, Backend, NotRun, Precision, TritonForm, load

if TYPE_CHECKING:
    from engines.base import Engine

__all__ = ["DEVICES", "Backend", "NotRun", "OpenOptions", "Precision", "TritonForm", "auto_order", "backend",
           "backend_for_suffix", "backend_names", "backends", "load", "open_with", "precision", "precision_names",
           "precisions", "target_names"]

_BACKENDS = {b.name: b for b in BACKENDS}
_PRECISIONS = {p.name: p for p in PRECISIONS}


def backends() -> tuple[Backend, ...]:
    """Every declared backend, in declaration order (PyTorch first: the baseline)."""
    return tuple(_BACKENDS.values())


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}") from None


def target_names() -> tuple[str, ...]:
    """The backends build-engine can build for (those with a target)."""
    return tuple(b.name for b in _BACKENDS.values() if b.target is not None)


def auto_order() -> tuple[str, ...]:
    """What `--target auto` tries, first choice first."""
    ranked = [b for b in _BACKENDS.values() if b.target is not None and b.auto_rank is not None]
    return tuple(b.name for b in sorted(ranked, key=lambda b: b.auto_rank or 0))


def backend_for_suffix(suffix: str) -> Backend | None:
    suffix = suffix.lower()
    return next((b for b in _BACKENDS.values() if suffix in b.suffixes), None)


def backend_for_format(manifest_format: str | None) -> Backend | None:
    return next((b for b in _BACKENDS.values() if b.manifest_format and b.manifest_format == manifest_format), None)


def precisions() -> tuple[Precision, ...]:
    return tuple(_PRECISIONS.values())


def precision_names() -> tuple[str, ...]:
    return tuple(_PRECISIONS)


def precision(name: str) -> Precision:
    try:
        return _PRECISIONS[name]
    except KeyError:
        raise KeyError(f"unknown precision {name!r}; known: {', '.join(_PRECISIONS)}") from None


def computed_by(precision_name: str) -> tuple[str, ...]:
    """The backends whose artifacts compute `precision_name`."""
    return tuple(b.name for b in _BACKENDS.values() if precision_name in b.precisions)


@dataclass(frozen=True)
class OpenOptions:
    """What a caller may ask of an engine as it opens; each opener takes the options its engine has."""

    device: str = "cpu"
    precision: str | None = None  # PyTorch: its compute precision; OpenVINO: its inference precision
    threads: int | None = None
    providers: list[str] | None = None  # ONNX Runtime execution providers
    channels_last: bool = False  # PyTorch
    include_copies: bool = True  # TensorRT: time host↔device copies
    cuda_graph: bool = False  # TensorRT
    performance_hint: str = "LATENCY"  # OpenVINO


def open_with(spec: Backend, path: Path, options: OpenOptions) -> Engine:
    """Open `path` with `spec`'s engine (no file checks and no self-check: `artifacts.open_engine` adds those)."""
    if spec.opener is not None:
        return load(spec.opener)(path, options)
    return spec.engine_class()(path, device=options.device, threads=options.threads)
