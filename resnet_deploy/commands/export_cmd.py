"""`resnet-deploy export`."""

from __future__ import annotations

from resnet_deploy.commands._common import not_implemented


def export() -> None:
    """Not implemented yet."""
    not_implemented("export")
