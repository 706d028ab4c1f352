"""Help text a user can read: metavars like `PATH`, `DIR`, `N` and `ARTIFACT...` instead of Typer's `<path>`,
`<list[Path]>` and `{source}`, and the top-level command list never cut with `...`.

`ReadableGroup` is the Typer root's class (`typer.Typer(cls=ReadableGroup)`): when the command tree is built it
gives every argument and option without an explicit `metavar=` a readable one, so a command added later gets
them too. An explicit `metavar=` in a command always wins.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import typer.core

#: options whose value is better named by what it is than by its type
OPTION_METAVARS = {
    "--data": "DIR", "--calib-data": "DIR", "--cache-dir": "DIR", "--out": "DIR", "--classes-from": "DIR",
    "--backends": "LIST", "--precisions": "LIST", "--batch-sizes": "LIST", "--bench-batch-sizes": "LIST",
    "--scenario": "LIST", "--classes": "LIST", "--mean": "R,G,B", "--std": "R,G,B", "--rename": "OLD=NEW",
    "--workspace": "SIZE", "--device": "DEVICE", "--arch": "NAME", "--batch": "BATCH",
    "--recipe": "NAME", "--split": "NAME", "--name": "NAME", "--dataset": "NAME", "--target": "TARGET",
    "--amp": "MODE", "--loader": "MODE", "--interpolation": "MODE", "--calib-method": "METHOD",
    "--hardware-compatibility": "LEVEL", "--duration": "SECONDS", "--bench-duration": "SECONDS",
    "--target-qps": "QPS", "--target-latency-ms": "MS", "--min-agreement": "PERCENT", "--max-top1-drop": "POINTS",
}
TYPE_METAVARS = {int: "N", float: "NUMBER", Path: "PATH", str: "TEXT"}


class ReadableGroup(typer.core.TyperGroup):
    """The root group: readable metavars on every command, and the command list's help never truncated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            readable_metavars(command)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                # The first sentence of the docstring, whole: a short one is the command's one-line summary.
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def readable_metavars(command: Any) -> None:
    for param in getattr(command, "params", []):
        if getattr(param, "metavar", None) is not None:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            name = (param.name or "value").upper()
            if param.nargs != 1:
                name = name.removesuffix("S") + "..."  # ARTIFACTS → ARTIFACT...
            param.metavar = name
        elif not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            option = max(param.opts, key=len)
            param.metavar = OPTION_METAVARS.get(option) or TYPE_METAVARS.get(_value_type(param), "TEXT")
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "_usage_display_name"):
            param.__class__ = _argument_class(type(param))


def _value_type(param: Any) -> type | None:
    """The Python type of one value of the option (the element type of a list)."""
    descriptor = getattr(param, "type_descriptor", None)  # Typer >= 0.29; older Typer has click types
    if descriptor is None:
        name = getattr(getattr(param, "type", None), "name", "")
        return {"integer": int, "float": float, "path": Path, "text": str}.get(name)
    annotation = descriptor.annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if isinstance(annotation, type) else None


_ARGUMENT_CLASSES: dict[type, type] = {}


def _argument_class(base: type) -> type:
    """Typer >= 0.29 writes a required argument as `{name}` in the usage line and appends its type
    (`<list[Path]>`) to its help row even when a metavar is given: write it as click always did."""
    if base not in _ARGUMENT_CLASSES:
        def usage(self: Any) -> str:
            return self.metavar if self.required else f"[{self.metavar}]"

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None

        _ARGUMENT_CLASSES[base] = type(f"Readable{base.__name__}", (base,), {
            "_usage_display_name": usage, "display_type_rich": display_type_rich})
    return _ARGUMENT_CLASSES[base]
