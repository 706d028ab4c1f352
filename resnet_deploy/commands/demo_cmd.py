"""`resnet-deploy demo`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def demo() -> None:
    """Not implemented yet."""
    not_implemented("demo")
