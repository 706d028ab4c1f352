"""What the training loop reports while it runs; the CLIs show it as a rich progress bar on stderr.

The loop only calls a `Reporter`; it never prints. Ranks other than 0 get the silent one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class Throughput:
    """Training images/s, the one definition the bar, metrics.jsonl and the summary all show: images over
    the time spent in training steps (evaluation and saving left out). Log windows that start in the first
    `warm` iterations of a session (compilation, cuDNN autotuning) count only until later ones exist."""

    start: int
    warm: int
    steady_images: int = 0
    steady_seconds: float = 0.0
    all_images: int = 0
    all_seconds: float = 0.0

    def add(self, window_start: int, images: int, seconds: float) -> None:
        self.all_images += images
        self.all_seconds += seconds
        if window_start - self.start >= self.warm:
            self.steady_images += images
            self.steady_seconds += seconds

    @property
    def images_per_s(self) -> float:
        if self.steady_seconds > 0:
            return self.steady_images / self.steady_seconds
        return self.all_images / self.all_seconds if self.all_seconds > 0 else 0.0


class Reporter:
    """Silent by default; subclasses show progress."""

    def message(self, text: str) -> None:
        pass

    def start_task(self, description: str, total: int, completed: int = 0) -> None:
        pass

    def advance_task(self, completed: int) -> None:
        pass

    def end_task(self) -> None:
        pass

    def start_training(self, total: int, completed: int) -> None:
        pass

    def training_step(self, iteration: int, *, loss: float, lr: float, images_per_s: float) -> None:
        pass

    def evaluation(self, record: dict[str, Any]) -> None:
        pass

    def end_training(self) -> None:
        pass


ProgressFactory = Callable[..., Progress]


class RichReporter(Reporter):
    """A progress bar with loss, lr and images/s; evaluations and notes printed above it.

    `make_progress(*columns)` lets the CLI choose the kind of bar (its plain-line progress when stderr is a
    log, not a terminal); without it, a rich bar on `console`."""

    def __init__(self, console: Console, make_progress: ProgressFactory | None = None) -> None:
        self.console = console
        self.make_progress = make_progress
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def message(self, text: str) -> None:
        # soft_wrap: a log keeps each message on one line (a terminal still wraps it for the eye).
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _open(self, *columns: Any) -> None:
        if self.make_progress is not None:
            self.progress = self.make_progress(*columns)
        else:
            self.progress = Progress(*columns, console=self.console, transient=False)
        self.progress.start()

    def start_task(self, description: str, total: int, completed: int = 0) -> None:
        self._open(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        assert self.progress is not None
        self.task = self.progress.add_task(description, total=total, completed=completed)

    def advance_task(self, completed: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=completed)

    def end_task(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.task = None, None

    def start_training(self, total: int, completed: int) -> None:
        self._open(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
            TimeElapsedColumn(), TimeRemainingColumn(),
        )
        assert self.progress is not None
        self.task = self.progress.add_task("train", total=total, completed=completed, loss="-", lr="-", speed="-")

    def training_step(self, iteration: int, *, loss: float, lr: float, images_per_s: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=iteration, loss=f"{loss:.4f}", lr=f"{lr:.4g}",
                                 speed=f"{images_per_s:,.0f} img/s")

    def evaluation(self, record: dict[str, Any]) -> None:
        split = record.get("eval_split", "test")
        text = (f"iter {record['iteration']}: train loss {record['train_loss']:.4f}, "
                f"train error {record['train_error']:.2f} %, {split} top-1 {record['test_top1']:.2f} % "
                f"(error {100 - record['test_top1']:.2f} %), top-5 {record['test_top5']:.2f} %")
        self.message(text)  # the bar's console is ours: rich prints the line above a live bar

    def end_training(self) -> None:
        self.end_task()
