"""The house style of the terminal tables (validate, bench, LoadGen, sensitivity), and how a table is made
to fit the terminal: numbers never wrap and are never cut; only name columns fold (a name then runs over two
lines, whole); when even that does not fit, the least needed columns are left out, in an order the caller
gives, and a caption under the table names them (`--wide` shows every column).

rich is imported lazily: a library module calls this only when it renders."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from typing import Any

#: columns for a table when stdout is not a terminal and COLUMNS is not set (a log: room for every column)
PIPED_WIDTH = 240
#: a folding (name) column is never narrower than its longest word, up to this many characters
FOLD_MIN = 14


@functools.cache
def stdout_console() -> Any:
    """The one rich console on stdout (commands/_output.py's `stdout`): created here, where tables are made."""
    from rich.console import Console

    return Console(highlight=False)


def table_console() -> Any:
    """Where a command prints its result tables: stdout. On a terminal rich uses its width; piped or redirected,
    the COLUMNS the user set (a script asking for 80 columns gets 80), else `PIPED_WIDTH` (rich would squeeze
    the table into 80)."""
    from rich.console import Console

    stdout = stdout_console()
    if stdout.is_terminal:
        return stdout
    return Console(width=environment_width() or PIPED_WIDTH, highlight=False, soft_wrap=False)


def environment_width() -> int | None:
    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def compact_table(title: str, *, caption: str | None = None) -> Any:
    """A table without vertical rules (two spaces between columns): the narrowest of rich's styles."""
    from rich import box
    from rich.table import Table

    return Table(title=title, caption=caption, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
                 collapse_padding=True, pad_edge=False)


def add_number_column(table: Any, header: str) -> None:
    """A column of numbers (or short words): right-aligned, never wrapped."""
    table.add_column(header, justify="right", no_wrap=True)


def add_word_column(table: Any, header: str) -> None:
    """A column of short words (a backend, a precision, a verdict): left-aligned, never wrapped."""
    table.add_column(header, justify="left", no_wrap=True)


def add_name_column(table: Any, header: str) -> None:
    """A column of names or sentences: folds onto more lines rather than cutting anything."""
    table.add_column(header, justify="left", overflow="fold")


def _widths(table: Any) -> list[tuple[int, int]]:
    """(fewest, natural) characters of each column's content: a no-wrap column needs its widest cell; a folding
    one its longest word, at most `FOLD_MIN` (a longer name folds inside itself, whole)."""
    from rich.cells import cell_len

    widths = []
    for column in table.columns:
        texts = [_plain(cell) for cell in [column.header, *column.cells]]
        natural = max((cell_len(line) for text in texts for line in text.splitlines()), default=1)
        if column.no_wrap:
            widths.append((natural, natural))
        else:
            longest = max((cell_len(word) for text in texts for word in text.split()), default=1)
            widths.append((min(longest, FOLD_MIN, natural), natural))
    return widths


def _overhead(table: Any) -> int:
    """Borders and padding: what the table adds to its columns' content."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=100_000, file=io.StringIO())
    natural = Measurement.get(console, console.options, table).maximum
    return natural - sum(wide for _, wide in _widths(table))


def minimum_width(table: Any) -> int:
    """The fewest terminal columns `table` needs with every no-wrap cell whole and each folding column at least
    as wide as its longest word (at most `FOLD_MIN`)."""
    return sum(few for few, _ in _widths(table)) + _overhead(table)


def _share_width(table: Any, width: int) -> None:
    """Fix the folding columns' widths so that `table` fills `width`: each gets its fewest characters and a share
    of the rest in proportion to what it lacks. (rich, left alone, shrinks the widest folding column first and
    would break short words such as "onnxruntime".)"""
    widths = _widths(table)
    overhead = _overhead(table)
    if sum(wide for _, wide in widths) + overhead <= width:
        return
    spare = width - overhead - sum(few for few, _ in widths)
    lacking = [wide - few for few, wide in widths]
    total = sum(lacking) or 1
    given = [spare * lack // total for lack in lacking]
    for i in sorted(range(len(widths)), key=lambda i: -lacking[i])[: spare - sum(given)]:
        given[i] += 1  # the remainder of the integer shares
    for column, (few, wide), extra in zip(table.columns, widths, given, strict=True):
        if not column.no_wrap and few < wide:
            column.width = min(wide, few + extra)


def fit_columns(build: Callable[[Sequence[str]], Any], columns: Sequence[str], droppable: Sequence[str],
                width: int | None) -> Any:
    """`build(shown)` for the most of `columns` that fit `width` (None: all of them), leaving out `droppable`
    in order; the table's caption names what was left out."""
    shown = list(columns)
    table = build(shown)
    if width is None:
        return table
    left_out: list[str] = []
    for name in droppable:
        if minimum_width(table) <= width:
            break
        if name in shown:
            shown.remove(name)
            left_out.append(name)
            table = build(shown)
    if minimum_width(table) <= width:
        _share_width(table, width)
    if left_out:
        names = ", ".join(name.replace("\n", " ") for name in left_out)
        note = f"not shown at {width} columns: {names} (--wide shows every column)"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
        table.caption_justify = "left"
    return table


def _plain(cell: Any) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)
