"""Shared option aliases and output helpers for the commands (the `hf` CLI's pattern).

Results go to stdout; logs, warnings and progress go to stderr, so `--json` output stays parseable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from resnet_deploy.errors import UsageError

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

DepthOption = Annotated[
    int | None,
    typer.Option("--depth", help="ResNet depth: 18/34/50/101/152 (ImageNet family) or 20/32/44/56/110/1202 (CIFAR)."),
]
ArchOption = Annotated[
    str | None, typer.Option("--arch", help="Exact architecture name, e.g. resnet50, resnet20, plain20.")
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Model card (.safetensors), trainer checkpoint or foreign .pth/.pt weights."),
]
NumClassesOption = Annotated[int | None, typer.Option("--num-classes", help="Classifier size (default: the family's).")]
RenameOption = Annotated[
    list[str] | None, typer.Option("--rename", help="OLD=NEW key-prefix rename for foreign weights (repeatable).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the result.")]


def resolve_arch(depth: int | None, arch: str | None, *, required: bool = True) -> str | None:
    """`--depth N` or `--arch NAME` (not both) → a registered architecture name."""
    from resnet_deploy.models import arch_from_depth, get_entry

    if depth is not None and arch is not None:
        raise UsageError("give --depth or --arch, not both")
    try:
        if depth is not None:
            return arch_from_depth(depth)
        if arch is not None:
            return get_entry(arch).name
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if required:
        raise UsageError("name a model: --depth N or --arch NAME")
    return None


def emit_json(document: Any) -> None:
    """Write exactly one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def warn(message: str) -> None:
    # Messages carry text like `pip install 'resnet-deploy[openvino]'`: never let rich read it as markup.
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")


def info(message: str, *, markup: bool = False) -> None:
    stderr.print(message if markup else escape(message))


def not_implemented(command: str) -> None:
    raise UsageError(f"`resnet-deploy {command}` is not implemented yet")
