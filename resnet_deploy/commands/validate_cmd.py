"""`resnet-deploy validate`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def validate() -> None:
    """Not implemented yet."""
    not_implemented("validate")
