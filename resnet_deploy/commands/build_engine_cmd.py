"""`resnet-deploy build-engine`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def build_engine() -> None:
    """Not implemented yet."""
    not_implemented("build-engine")
