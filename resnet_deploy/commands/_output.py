"""What commands print, and where: results on stdout, logs, warnings and progress on stderr (rich).

`--json` makes stdout exactly one JSON document (`emit_json`). User-facing text goes through `plain`
(rich would read `resnet-deploy[openvino]` or `m[1].onnx` as markup and drop it). Every command's
progress bar is `progress_bar`: a live bar on a terminal; with stderr not a terminal (CI logs, `2> log`)
a plain line every few seconds saying what, how far and the ETA. `--quiet`/`--verbose` (`verbosity_options`,
added to every command) set how much goes to stderr: quiet keeps only warnings and errors.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from resnet_deploy.tables import stdout_console

#: seconds between plain progress lines when stderr is not a terminal (env override for logs and tests)
PLAIN_PROGRESS_INTERVAL_S = 5.0
_verbosity = 0  # -1: --quiet, 0: default, 1: --verbose

stderr = Console(stderr=True, highlight=False)
stdout = stdout_console()  # the same console tables print to


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
    # soft_wrap: a log line stays one line (paths and commands can be copied); the terminal wraps it for display
    stderr.print(f"[yellow]warning:[/yellow] {plain(message)}", soft_wrap=True)


def info(message: str, *, markup: bool = False) -> None:
    """An information line on stderr (not with --quiet)."""
    if _verbosity >= 0:
        stderr.print(message if markup else plain(message), soft_wrap=True)


def detail(message: str) -> None:
    """A line only --verbose shows."""
    if _verbosity > 0:
        stderr.print(plain(message), soft_wrap=True)


def set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    global _verbosity
    _verbosity = -1 if quiet else 1 if verbose else 0


def verbose() -> bool:
    return _verbosity > 0


def quiet() -> bool:
    return _verbosity < 0


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with the shared `--quiet/-q` and `--verbose/-v` options added (they set the verbosity, then
    the command runs as before)."""
    from resnet_deploy.commands._options import QuietOption, VerboseOption

    hints = get_type_hints(command, include_extras=True)
    signature = inspect.signature(command)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
               for name, annotation in (("quiet", QuietOption), ("verbose", VerboseOption))]

    @functools.wraps(command)
    def run(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
        if quiet and verbose:
            from resnet_deploy.errors import UsageError

            raise UsageError("give --quiet or --verbose, not both")
        set_verbosity(quiet=quiet, verbose=verbose)
        return command(*args, **kwargs)

    del run.__wrapped__  # Typer reads the signature below, with resolved annotations
    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def progress_bar(*columns: ProgressColumn | str, transient: bool = True) -> Progress:
    """The progress bar every command shows on stderr: description, bar, done/total, time elapsed by default;
    a command that knows better passes its own columns. Descriptions must be `plain`-ed by the caller.
    Not a terminal: plain lines instead (`PlainLineProgress`); --quiet: nothing."""
    chosen = columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    if _verbosity < 0:
        return Progress(*chosen, console=stderr, disable=True)
    if not stderr.is_terminal:
        return PlainLineProgress(*chosen, console=stderr, disable=True)
    return Progress(*chosen, console=stderr, transient=transient)


class PhaseProgress:
    """`progress_bar` fed by a library's `(phase, done, total)` callback (one task per phase), started on the
    first call; `completed()` says how far it got, for an interrupted run's message."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._done: dict[str, tuple[int, int]] = {}

    def update(self, phase: str, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = progress_bar(transient=False)
            self._bar.start()
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._bar.add_task(plain(phase), total=max(total, 1))
        self._bar.update(task, completed=done, total=max(total, 1))
        self._done[phase] = (done, max(total, 1))

    def completed(self) -> str:
        """What the interrupted build had done: the phases finished, and how far the current one got."""
        finished = [phase for phase, (done, total) in self._done.items() if done >= total]
        current = [f"{phase} {done}/{total}" for phase, (done, total) in self._done.items() if done < total]
        text = f"completed: {', '.join(finished)}" if finished else "no phase completed"
        return text + (f"; stopped during {', '.join(current)}" if current else "")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def training_bar(*columns: ProgressColumn | str) -> Progress:
    """The trainer's bars (decode, train): kept on screen when done, plain lines in a log."""
    return progress_bar(*columns, transient=False)


class PlainLineProgress(Progress):
    """Progress for a log: every few seconds one line per task (what, done/total and %, elapsed, ETA), and one
    when it ends. --verbose also prints a line whenever the description changes."""

    def __init__(self, *columns: ProgressColumn | str, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._interval = _interval()
        self._last_line: dict[TaskID, float] = {}
        self._last_text: dict[TaskID, str] = {}
        self._described: dict[TaskID, str] = {}
        self._final: set[TaskID] = set()  # tasks whose finished line is printed: never a second time at stop

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        described = kwargs.get("description")
        changed = described is not None and described != self._described.get(task_id)
        if described is not None:
            self._described[task_id] = described
        super().update(task_id, **kwargs)
        self._maybe_line(task_id, changed=changed)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def stop(self) -> None:
        # A task that stopped short of its total gets its last state; a finished one was printed when it finished.
        for task in self.tasks:
            if task.completed and task.id not in self._final and self._last_text.get(task.id) != self._line(task.id):
                stderr.print(self._line(task.id), soft_wrap=True)
        super().stop()

    def _maybe_line(self, task_id: TaskID, *, changed: bool = False) -> None:
        now = time.monotonic()
        last = self._last_line.get(task_id)
        task = self._tasks[task_id]
        finished = bool(task.total) and task.completed >= task.total
        if finished and task_id in self._final and not changed:
            return
        if finished:
            self._final.add(task_id)
        if finished or last is None or now - last >= self._interval or (changed and _verbosity > 0):
            self._last_line[task_id] = now
            line = self._line(task_id)
            self._last_text[task_id] = line
            stderr.print(line, soft_wrap=True)

    def _line(self, task_id: TaskID) -> str:
        task = self._tasks[task_id]
        done = f"{task.completed:g}" + (f"/{task.total:g} ({task.percentage:.0f}%)" if task.total else "")
        eta = task.time_remaining
        # rich keeps a finished task's clock running until the bar stops; its finished_time is when it ended.
        elapsed = task.finished_time if task.finished_time is not None else task.elapsed
        parts = [done, f"{_clock(elapsed or 0.0)} elapsed"]
        if eta is not None and task.total and task.finished_time is None:
            parts.append(f"ETA {_clock(eta)}")
        # What a bar shows beside the count (train's loss, lr and img/s), once it has a value.
        parts += [f"{name} {value}" for name, value in task.fields.items() if value not in ("", "-", None)]
        return f"{task.description}: {', '.join(parts)}"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RESNET_DEPLOY_PROGRESS_INTERVAL", PLAIN_PROGRESS_INTERVAL_S)))
    except ValueError:
        return PLAIN_PROGRESS_INTERVAL_S


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
