"""Which versions of the libraries are installed: the one reader for the environment, manifests and card lineage."""

from __future__ import annotations

from importlib import metadata

from resnet_deploy import registry

# Library → the distributions that install it (the first one present wins). The runtimes' names come from their
# declarations (registry/backends.py); the rest are the pipeline's own libraries.
DISTRIBUTIONS = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    **{b.module: b.distributions for b in registry.backends()},  # by module: two backends may share one (torch)
    "numpy": ("numpy",),
}


def library_versions(*names: str, imported: bool = False) -> dict[str, str | None]:
    """Versions of `names` (default: every library in `DISTRIBUTIONS`), absent → None.

    By default read from package metadata, importing nothing. `imported`: the module's own `__version__`
    (importing it), which keeps a build's local tag such as `+cu130` that the metadata may not carry: what a
    card's lineage records about the libraries that made the weights."""
    if imported:
        import importlib

        return {name: getattr(importlib.import_module(name), "__version__", None) for name in names}
    return {name: _dist_version(DISTRIBUTIONS.get(name, (name,))) for name in (names or DISTRIBUTIONS)}


def _dist_version(candidates: tuple[str, ...]) -> str | None:
    for dist in candidates:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
