"""`resnet-deploy bench`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def bench() -> None:
    """Not implemented yet."""
    not_implemented("bench")
