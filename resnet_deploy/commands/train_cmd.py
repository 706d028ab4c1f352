"""`resnet-deploy train`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def train() -> None:
    """Not implemented yet."""
    not_implemented("train")
