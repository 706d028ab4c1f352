"""Interleaved timing: every case's engine open at once, then `rounds` rounds in which each case x batch size
gets a slice of its timed calls, round-robin (forward in even rounds, backward in odd ones).

A burst of load on a shared machine then lands on one round of many rows instead of the whole of one row,
and shows up as rounds that disagree (`timing.flag_results`). Ctrl-C (or SIGTERM, which the CLI's runner
turns into KeyboardInterrupt) stops the run: the rows with at least one round are kept, marked interrupted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.base import BackendUnavailableError, Engine, EngineError, EngineInputError
from resnet_deploy.bench.timing import (
    BenchResult,
    Runner,
    Skipped,
    TimingConfig,
    make_runner,
    measure,
    random_batch,
    result_from_rounds,
)


@dataclass
class Slot:
    """One case at one batch size: its engine, its bound run and the samples of each round so far."""

    case: Any  # plan.BenchCase
    engine: Engine
    batch_size: int
    runner: Runner
    artifact: str
    rounds: list[list[float]] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.case.model} {self.case.backend} {self.case.precision} batch {self.batch_size}"


@dataclass
class RoundsOutcome:
    results: list[BenchResult]
    skipped: list[Skipped]
    interrupted: bool


def run_rounds(cases: Sequence[Any], batch_sizes: Sequence[int], timing: TimingConfig, *, include_copies: bool,
               say: Callable[[str], None], step: Callable[[], None]) -> RoundsOutcome:
    """Open every case, then time all slots in interleaved rounds. `step` is called once per slot and round
    (also for slots that could not run), so a progress total of slots x rounds ends full."""
    skipped: list[Skipped] = []
    slots: list[Slot] = []
    rounds = timing.effective_rounds
    interrupted = False
    with ExitStack() as stack:
        try:
            for case in cases:
                _open_case(case, batch_sizes, include_copies, stack, slots, skipped, say, lambda: _steps(step, rounds))
            live = list(slots)
            for index in range(rounds):
                order = live if index % 2 == 0 else live[::-1]
                for slot in list(order):
                    say(f"round {index + 1}/{rounds}: timing {slot.label()}")
                    try:
                        slot.rounds.append(measure(slot.runner, timing.slice(index)))
                    except EngineError as exc:  # e.g. out of device memory at a large batch
                        skipped.append(_skip(slot.case, f"failed: {exc}", slot.batch_size))
                        live.remove(slot)
                        slot.rounds.clear()
                        _steps(step, rounds - index - 1)
                    step()
        except KeyboardInterrupt:
            interrupted = True
        results = [result_from_rounds(s.engine, s.batch_size, s.rounds, timing, s.runner, model=s.case.model,
                                      artifact=s.artifact) for s in slots if s.rounds]
    return RoundsOutcome(results, skipped, interrupted)


def _open_case(case: Any, batch_sizes: Sequence[int], include_copies: bool, stack: ExitStack, slots: list[Slot],
               skipped: list[Skipped], say: Callable[[str], None], step_slot: Callable[[], None]) -> None:
    """Open one case's engine (kept open by `stack`) and bind a fresh random batch per batch size."""
    sizes = case.sizes(batch_sizes)
    say(f"opening {case.model} {case.backend} {case.precision}")
    try:
        engine = stack.enter_context(case.open())
    except BackendUnavailableError as exc:
        skipped.append(_skip(case, str(exc), _only(case)))
        for _ in sizes:
            step_slot()
        return
    if engine.precision != case.precision and case.as_computed:
        case = dataclasses.replace(case, precision=engine.precision)  # the row names what runs
    elif engine.precision != case.precision:
        skipped.append(_skip(case, f"asked for {case.precision}, but {case.backend} runs {engine.precision} here",
                             _only(case)))
        for _ in sizes:
            step_slot()
        return
    artifact = str(getattr(engine, "path", None) or case.artifact)
    for batch_size in sizes:
        try:
            runner = make_runner(engine, _batch_for(engine, batch_size), include_copies=include_copies)
        except EngineInputError as exc:
            skipped.append(_skip(case, str(exc), batch_size))
            step_slot()
        except EngineError as exc:
            skipped.append(_skip(case, f"failed: {exc}", batch_size))
            step_slot()
        else:
            slots.append(Slot(case, engine, batch_size, runner, artifact))


def _batch_for(engine: Engine, batch_size: int) -> np.ndarray:
    shape = (batch_size, *(d if d is not None else 1 for d in engine.input.shape[1:]))
    return random_batch(shape)


def _steps(step: Callable[[], None], count: int) -> None:
    for _ in range(count):
        step()


def _skip(case: Any, reason: str, batch_size: int | None) -> Skipped:
    return Skipped(case.model, case.backend, case.precision, reason, batch_size)


def _only(case: Any) -> int | None:
    """The batch size a per-batch case stands for (None: all of them)."""
    if getattr(case, "static_batch", None) is not None:
        return case.static_batch
    return case.batch_sizes[0] if case.batch_sizes and len(case.batch_sizes) == 1 else None
