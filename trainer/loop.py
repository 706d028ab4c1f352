"""The training run: set up (`trainer.setup`), then the loop in named steps — one iteration, a log point,
an evaluation, a checkpoint — and the finish (final numbers, cards, figures).

A run folder (`--output`) holds `run.json` (options and the resolved schedule), `last.pt` (the exact
training state, written atomically every `save_every` iterations and at the end), `metrics.jsonl`
(one line per evaluation), model cards `best.safetensors` and `last.safetensors`, `curves.png`
(Fig. 6 style) and, with `--analyze-responses`, `responses.json` (Fig. 7). Only rank 0 writes, and
only while it holds the folder's lock (`.lock`). Nothing non-finite is ever written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.atomic import write_text
from resnet_deploy.card import ModelCard, save_card, stamp_lineage
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.models import get_entry
from trainer import distributed
from trainer.checkpoint import cpu_state_dict, rng_state, save_training_state, set_rng_state
from trainer.config import TrainConfig
from trainer.evaluate import EvalResult, autocast, evaluate
from trainer.plots import RESPONSES_FILE, plot_curves
from trainer.progress import Reporter, Throughput
from trainer.runlog import METRICS_FILE, MetricsLog
from trainer.safety import TrainingInterrupted, all_finite, sigterm_as_interrupt, writing
from trainer.setup import Prepared, prepare

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    out: Path
    iters: int
    total_iters: int
    completed: bool
    train_loss: float
    train_error: float
    test_loss: float
    test_top1: float
    test_top5: float
    eval_split: str
    images_per_s: float
    train_seconds: float
    world_size: int
    global_batch: int
    checkpoint: Path | None  # last.safetensors
    best_checkpoint: Path | None
    last_pt: Path | None
    metrics_file: Path | None
    plot: Path | None
    responses_file: Path | None = None
    test: dict[str, Any] | None = None  # the test split's numbers when `eval_split` is a held-out part
    best_top1: float | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rank_weight_digests: list[str] = field(default_factory=list)
    skipped_images: int = 0  # unreadable images left out (--skip-bad)
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["ranks_agree"] = len(set(self.rank_weight_digests)) <= 1
        data.pop("is_main")
        return data


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Run (or continue) one training run; under torchrun every rank calls this."""
    _check_options(config)
    ctx = distributed.setup(config.device)
    try:
        with sigterm_as_interrupt():
            return _Run(config, ctx, reporter if (reporter is not None and ctx.is_main) else Reporter()).run()
    finally:
        distributed.cleanup(ctx)


def _check_options(config: TrainConfig) -> None:
    config.check()
    if config.arch and not config.resume and config.resume_from is None:
        try:
            get_entry(config.arch)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None


@dataclass
class _State:
    """Where the loop stands: the iteration, running sums since the last log and evaluation, the best."""

    iteration: int
    stop: int
    window: torch.Tensor  # loss sum, correct (since the last evaluation), on the device: no per-step sync
    log_loss: torch.Tensor  # loss sum since the last log point
    throughput: Throughput
    window_images: int = 0
    log_images: int = 0
    window_start: int = 0
    best_top1: float = -1.0
    best_iteration: int = 0
    train_seconds: float = 0.0
    saved_iteration: int | None = None  # of the last.pt on disk
    last_eval: EvalResult | None = None
    train_loss: float = float("nan")
    train_error: float = float("nan")
    last_card: ModelCard | None = None
    mark: float = 0.0


class _Run:
    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, reporter: Reporter) -> None:
        self.config = config
        self.ctx = ctx
        self.reporter = reporter
        self.p: Prepared

    def run(self) -> TrainResult:
        p = self.p = prepare(self.config, self.ctx, self.reporter)
        try:
            state = self._restore()
            self._start(state)
            self._train(state)
            return self._finish(state)
        finally:
            if p.lock is not None:
                p.lock.release()

    # --- before the loop ---------------------------------------------------------------------------

    def _restore(self) -> _State:
        """A fresh state, or the checkpoint's on --resume (weights, optimizer, RNG, running sums)."""
        p, cfg, ctx = self.p, self.config, self.ctx
        self.metrics = MetricsLog(p.out / METRICS_FILE) if ctx.is_main else None
        state = _State(0, 0, torch.zeros(2, dtype=torch.float64, device=ctx.device),
                       torch.zeros((), dtype=torch.float64, device=ctx.device), Throughput(0, 0))
        resume = p.resume
        if resume is not None:
            saved_card = ModelCard.from_json(resume.data["card"])
            if saved_card.class_names != list(p.data.class_names):
                raise UsageError(f"--resume: the run was trained on classes {saved_card.class_names[:5]}..., "
                                 f"--data {cfg.data} has {p.data.class_names[:5]}...")
            p.model.load_state_dict(resume.data["model"])
            p.optimizer.load_state_dict(resume.data["optimizer"])
            p.scheduler.load_state_dict(resume.data["scheduler"])
            if resume.data.get("scaler"):
                p.scaler.load_state_dict(resume.data["scaler"])
            set_rng_state(resume.data["rng"])
            state.iteration = state.saved_iteration = resume.iteration
            best = resume.data.get("best") or {}
            state.best_top1, state.best_iteration = float(best.get("top1", -1.0)), int(best.get("iteration", 0))
            state.train_seconds = float(resume.data.get("train_seconds", 0.0))
            if self.metrics is not None:
                self.metrics.keep_until(state.iteration)
            self.reporter.message(f"resuming {resume.path} at iteration {state.iteration} of "
                                  f"{p.schedule.total_iters}")
            if resume.data.get("train_window"):
                loss_sum, correct, images = resume.data["train_window"]
                state.window += torch.tensor([loss_sum, correct], dtype=torch.float64, device=ctx.device)
                state.window_images = int(images)
        state.stop = min(p.schedule.total_iters, cfg.max_iters or p.schedule.total_iters)
        if state.iteration >= state.stop:
            raise UsageError(f"nothing to do: the checkpoint is at iteration {state.iteration} and the run stops "
                             f"at {state.stop} (raise --max-iters, or drop it to finish the schedule)")
        # Images/s leaves out the log windows that start in the first iterations (compilation, cuDNN autotuning).
        state.throughput = Throughput(state.iteration, min(10, max(0, state.stop - state.iteration - 1)))
        state.window_start = state.iteration
        return state

    def _start(self, state: _State) -> None:
        """Wrap the model for DDP / compile and write run.json."""
        p, cfg, ctx = self.p, self.config, self.ctx
        self.train_model: nn.Module = p.model
        if ctx.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                p.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        if ctx.is_main:
            with writing(p.out / "run.json"):
                write_text(p.out / "run.json", json.dumps({
                    "config": cfg.to_dict(), "schedule": p.schedule.to_dict(), "recipe": p.recipe.to_dict(),
                    "preprocessing": p.preprocessing.to_dict(), "data": p.data.describe(), "loader": p.loader,
                    "device": str(ctx.device), "world_size": ctx.world_size,
                }, indent=2, sort_keys=True) + "\n")
        state.last_card = self._card({})

    # --- the loop ----------------------------------------------------------------------------------

    def _train(self, state: _State) -> None:
        """Iterate to `stop`: log, evaluate and checkpoint when due. Ctrl-C/SIGTERM end it with a resume hint."""
        schedule = self.p.schedule
        log_every = 1 if self.ctx.device.type == "cpu" else 25
        # The bar counts what this run will do (to --max-iters), so its total and ETA are honest.
        self.reporter.start_training(total=state.stop, completed=state.iteration)
        state.mark = time.perf_counter()
        try:
            while state.iteration < state.stop:
                self._step(state)
                due_eval = state.iteration % schedule.eval_every == 0 or state.iteration == state.stop
                due_save = state.iteration % schedule.save_every == 0 or state.iteration == state.stop
                if state.iteration % log_every == 0 or due_eval or due_save:
                    self._log(state)
                if due_eval:
                    self._evaluate(state)
                if due_save:
                    self._checkpoint(state, state.last_card)
                if due_eval or due_save:
                    state.mark = time.perf_counter()  # evaluation and saving are not training time
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted at iteration {state.iteration}; {self._resume_hint(state)}") \
                from None
        finally:
            self.reporter.end_training()
            self.p.batches.close()

    def _step(self, state: _State) -> None:
        """One SGD iteration; the sums stay on the device."""
        p = self.p
        x, y = p.batches.get(state.iteration)
        with autocast(self.ctx.device, p.amp_dtype):
            logits = self.train_model(x)
            loss = F.cross_entropy(logits, y)
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.scale(loss).backward()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.scheduler.step()
        with torch.no_grad():
            batch = int(y.shape[0])
            batch_loss = loss.detach().double() * batch
            state.window += torch.stack([batch_loss, (logits.argmax(1) == y).sum().double()])
            state.log_loss += batch_loss
            state.window_images += batch
            state.log_images += batch
        state.iteration += 1

    def _log(self, state: _State) -> None:
        """A log point: synchronize, time the window, stop on a non-finite loss, move the bar."""
        world = self.ctx.world_size
        loss_sum, images = state.log_loss.item(), state.log_images  # .item() synchronizes with the device
        now = time.perf_counter()
        seconds = now - state.mark
        state.train_seconds += seconds
        state.throughput.add(state.window_start, images * world, seconds)
        if not math.isfinite(loss_sum):
            raise CheckFailed(f"training diverged: the loss is not finite at iteration {state.iteration}; "
                              f"{self._resume_hint(state)}; for a new run lower --lr, add --warmup-iters, "
                              "or use --amp bf16 instead of fp16")
        self.reporter.training_step(state.iteration, loss=loss_sum / max(images, 1),
                                    lr=self.p.schedule.lr_at(state.iteration - 1),
                                    images_per_s=state.throughput.images_per_s)
        state.log_loss.zero_()
        state.log_images = 0
        state.mark, state.window_start = now, state.iteration

    def _evaluate(self, state: _State) -> None:
        """Training numbers since the last evaluation (all ranks), test numbers, metrics.jsonl, best card."""
        p, ctx, it = self.p, self.ctx, state.iteration
        distributed.broadcast_buffers(ctx, p.model)
        counted = torch.cat([state.window, torch.tensor([float(state.window_images)], dtype=torch.float64,
                                                        device=ctx.device)])
        totals = distributed.all_reduce_sum(ctx, counted).tolist()  # loss sum, correct, images
        if it % p.schedule.eval_every == 0 or it == p.schedule.total_iters:
            # Not at a --max-iters cut: a resumed run then logs what the uninterrupted one does.
            state.window.zero_()
            state.window_images = 0
        state.train_loss = totals[0] / max(totals[2], 1)
        state.train_error = 100 - 100 * totals[1] / max(totals[2], 1)
        state.last_eval, _ = evaluate(p.model, p.eval_batches, ctx, autocast_dtype=p.amp_dtype)
        record = {
            "iteration": it, "epoch": round(it / p.plan.iters_per_epoch, 3),
            "lr": p.schedule.lr_at(it - 1), "train_loss": state.train_loss, "train_error": state.train_error,
            "test_loss": state.last_eval.loss, "test_top1": state.last_eval.top1, "test_top5": state.last_eval.top5,
            "test_error": 100 - state.last_eval.top1, "eval_split": p.data.eval_split,
            "eval_images": state.last_eval.images, "images_per_s": state.throughput.images_per_s,
            "train_seconds": round(state.train_seconds, 2), "arch": self.config.arch,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        state.last_card = self._card(_card_metrics(record))
        if self.metrics is not None:
            with writing(self.metrics.path):
                self.metrics.append(record)
        self.reporter.evaluation(record)
        if state.last_eval.top1 > state.best_top1:
            state.best_top1, state.best_iteration = state.last_eval.top1, it
            self._check_finite(state)
            if ctx.is_main:
                with writing(p.out / "best.safetensors", self._where(state)):
                    save_card(p.out / "best.safetensors", p.model, state.last_card)

    def _checkpoint(self, state: _State, card: ModelCard | None) -> None:
        """last.pt: the exact training state, written only when every weight is finite."""
        p = self.p
        self._check_finite(state)
        if not self.ctx.is_main:
            return
        assert card is not None
        path = p.out / "last.pt"
        with writing(path, self._where(state)):
            save_training_state(path, {
                "card": card.to_json(),
                "model": cpu_state_dict(p.model),
                "optimizer": p.optimizer.state_dict(),
                "scheduler": p.scheduler.state_dict(),
                "scaler": p.scaler.state_dict(),
                "rng": rng_state(),
                "position": {"iteration": state.iteration, "epoch": state.iteration // p.plan.iters_per_epoch,
                             "step_in_epoch": state.iteration % p.plan.iters_per_epoch},
                "schedule": p.schedule.to_dict(),
                "config": self.config.to_dict(),
                "best": {"top1": state.best_top1, "iteration": state.best_iteration},
                "train_seconds": state.train_seconds,
                # Training loss/accuracy sums since the last evaluation, so the next log line is the same.
                "train_window": [*state.window.tolist(), float(state.window_images)],
            })
        state.saved_iteration = state.iteration

    # --- the end -----------------------------------------------------------------------------------

    def _finish(self, state: _State) -> TrainResult:
        """Final evaluation numbers, responses, last.pt and last.safetensors, curves.png."""
        p, cfg, ctx = self.p, self.config, self.ctx
        last_eval = state.last_eval
        assert last_eval is not None
        distributed.broadcast_buffers(ctx, p.model)
        final = {**_card_metrics_from(last_eval, p.data.eval_split, state.iteration, state.train_loss,
                                      state.train_error),
                 "best_top1": state.best_top1, "best_iteration": state.best_iteration}
        test_numbers = None
        if p.test_batches is not None:
            test_eval, _ = evaluate(p.model, p.test_batches, ctx, autocast_dtype=p.amp_dtype)
            test_numbers = {"split": p.data.test_split, "images": test_eval.images, "top1": test_eval.top1,
                            "top5": test_eval.top5, "loss": test_eval.loss}
            final.update({f"{p.data.test_split}_top1": test_eval.top1,
                          f"{p.data.test_split}_top5": test_eval.top5})
        responses_file = self._responses(state.iteration) if cfg.analyze_responses else None
        digests = distributed.gather_strings(ctx, distributed.weights_digest(p.model))
        ips = state.throughput.images_per_s
        final["images_per_s"] = round(ips, 1)
        result = TrainResult(
            out=p.out, iters=state.iteration, total_iters=p.schedule.total_iters,
            completed=state.iteration >= p.schedule.total_iters, train_loss=state.train_loss,
            train_error=state.train_error, test_loss=last_eval.loss, test_top1=last_eval.top1,
            test_top5=last_eval.top5, eval_split=p.data.eval_split, images_per_s=ips,
            train_seconds=round(state.train_seconds, 2), world_size=ctx.world_size,
            global_batch=p.schedule.global_batch, checkpoint=None, best_checkpoint=None, last_pt=None,
            metrics_file=None, plot=None, responses_file=responses_file, test=test_numbers,
            best_top1=state.best_top1, schedule=p.schedule.to_dict(), notes=p.notes, rank_weight_digests=digests,
            skipped_images=len(p.data.skipped), is_main=ctx.is_main,
        )
        card = self._card(final)
        self._checkpoint(state, card)
        if ctx.is_main:
            with writing(p.out / "last.safetensors", self._where(state)):
                result.checkpoint = save_card(p.out / "last.safetensors", p.model, card)
            result.best_checkpoint = p.out / "best.safetensors"
            result.last_pt = p.out / "last.pt"
            result.metrics_file = p.out / METRICS_FILE
            try:
                result.plot = plot_curves([p.out], p.out / "curves.png", title=f"{cfg.arch} on {p.data.root.name}")
            except (ImportError, RuntimeError, ValueError) as exc:
                self.reporter.message(f"warning: could not draw curves.png ({exc})")
        return result

    def _responses(self, iteration: int) -> Path | None:
        p, ctx = self.p, self.ctx
        _, layers = evaluate(p.model, p.test_batches or p.eval_batches, ctx, autocast_dtype=p.amp_dtype,
                             responses=True)
        if not ctx.is_main or layers is None:
            return None
        path = p.out / RESPONSES_FILE
        with writing(path):
            write_text(path, json.dumps({"arch": self.config.arch, "iteration": iteration, "layers": layers},
                                        indent=2) + "\n")
        return path

    # --- helpers -----------------------------------------------------------------------------------

    def _card(self, metrics_now: dict[str, Any]) -> ModelCard:
        card = dataclasses.replace(self.p.base_card, metrics=dict(metrics_now))
        return stamp_lineage(card, trained_by="resnet_deploy.trainer", run=str(self.p.out))

    def _check_finite(self, state: _State) -> None:
        if not all_finite(self.p.model):
            raise CheckFailed(f"training diverged: the weights are not finite at iteration {state.iteration}; "
                              f"{self._resume_hint(state)}; for a new run lower --lr or add --warmup-iters")

    def _resume_hint(self, state: _State) -> str:
        if state.saved_iteration is None:
            return "no checkpoint was written yet (start again)"
        last = self.p.out / "last.pt"
        return (f"{last} holds iteration {state.saved_iteration}, intact; resume with "
                f"`resnet-deploy train --output {self.p.out} --resume`")

    def _where(self, state: _State) -> str:
        done = f"{self.p.out / 'last.pt'} holds iteration {state.saved_iteration}" \
            if state.saved_iteration is not None else "no checkpoint was written"
        return f" ({done}; free space or fix permissions, then resume)"


def _card_metrics(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "iterations": record["iteration"], "eval_split": record["eval_split"], "top1": record["test_top1"],
        "top5": record["test_top5"], "loss": record["test_loss"], "train_loss": record["train_loss"],
        "train_error": record["train_error"],
    }


def _card_metrics_from(result: EvalResult, split: str, iteration: int, train_loss: float,
                       train_error: float) -> dict[str, Any]:
    return {"iterations": iteration, "eval_split": split, "top1": result.top1, "top5": result.top5,
            "loss": result.loss, "train_loss": train_loss, "train_error": train_error}
