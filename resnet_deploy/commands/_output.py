"""What commands print, and where: results on stdout, logs, warnings and progress on stderr (rich).

`--json` makes stdout exactly one JSON document (`emit_json`). User-facing text goes through `plain`
(rich would read `resnet-deploy[openvino]` or `m[1].onnx` as markup and drop it). Every command's
progress bar is `progress_bar`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def plain(text: object) -> str:
    """`text` as literal rich text: square brackets are shown, never read as markup."""
    return escape(str(text))


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
    stderr.print(f"[yellow]warning:[/yellow] {plain(message)}")


def info(message: str, *, markup: bool = False) -> None:
    stderr.print(message if markup else plain(message))


def progress_bar(*columns: ProgressColumn | str, transient: bool = True) -> Progress:
    """The progress bar every command shows on stderr: description, bar, done/total, time elapsed by default;
    a command that knows better passes its own columns. Descriptions must be `plain`-ed by the caller."""
    chosen = columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*chosen, console=stderr, transient=transient)
