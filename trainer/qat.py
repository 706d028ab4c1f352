"""Quantization-aware fine-tuning: a model card's FP32 ResNet teaches its fake-quantized INT8 twin.

`finetune_int8(FinetuneConfig)` is what `resnet-deploy finetune-int8` runs:

1. The card's model is the teacher (FP32, frozen). Its twin `precision.qat.QatResNet` has BatchNorm
   folded and INT8 quantizers where post-training INT8 puts them, with 7- or 8-bit weights for the
   CPU class (`precision.isa`).
2. Each weight channel's clip factor is fitted (least rounding + clipping error), then the activation
   scales come from a calibration pass over `--calib-samples` training images through the card's
   evaluation transform (percentile of |x|, the post-training default); both then stay fixed.
3. Training: the trainer's batches (`trainer.data.BatchPlan`: batch i is a pure function of the seed
   and i; CIFAR-sized cards decode once and augment on the device, others use worker processes),
   loss = T² · KL(teacher ‖ student at temperature T) + ce_weight · cross-entropy on the labels,
   SGD with momentum and a cosine schedule, bf16 autocast where the device computes it fast, DDP
   when launched by torchrun (gloo on CPUs, NCCL on GPUs). The state (`<output>.finetune.pt`) is
   written atomically every `save_every` iterations and at the end: `--resume` continues exactly.
   An exponential moving average of the weights (torch's AveragedModel, `ema_decay`) is kept beside them.
4. At the end of the schedule (`trainer.qat_finish`): the average exported (`precision.qat_export`),
   the Q/DQ file checked against it on held-out images with ONNX Runtime's graph optimizations off,
   and the INT8 model's agreement with the teacher judged by the INT8 build gate. Only then is
   `output` written.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_deploy.atomic import atomic_path, sha256_file
from resnet_deploy.errors import CheckFailed, UsageError
from trainer import distributed
from trainer.progress import Reporter
from trainer.qat_config import (
    MOMENTUM,
    RUN_DEFINING,
    STATE_FORMAT,
    FinetuneConfig,
    FinetuneResult,
)
from trainer.safety import TrainingInterrupted, sigterm_as_interrupt


def finetune_int8(config: FinetuneConfig, reporter: Reporter | None = None) -> FinetuneResult:
    """Run (or continue) one fine-tuning; under torchrun every rank calls this."""
    config.check()
    ctx = distributed.setup(config.device)
    try:
        with sigterm_as_interrupt():
            return _Finetune(config, ctx, reporter if reporter is not None and ctx.is_main else Reporter()).run()
    finally:
        distributed.cleanup(ctx)


class _Finetune:
    def __init__(self, config: FinetuneConfig, ctx: distributed.DistContext, reporter: Reporter) -> None:
        self.cfg, self.ctx, self.reporter = config, ctx, reporter
        self.notes: list[str] = []

    # --- set-up ------------------------------------------------------------------------------------

    def run(self) -> FinetuneResult:
        from resnet_deploy.checkpoints import load_model
        from resnet_deploy.paths import require_writable_folder
        from resnet_deploy.precision.isa import resolve_cpu_target, weight_bits_for

        cfg, ctx = self.cfg, self.ctx
        cpu_target = resolve_cpu_target(cfg.cpu)
        bits = weight_bits_for(cpu_target)
        require_writable_folder(cfg.output)
        resume = self._load_state(bits) if cfg.resume else None
        if resume is None and cfg.state_path.exists():
            raise UsageError(f"{cfg.state_path} holds a fine-tuning run already; pass --resume to continue it, or "
                             "delete it to start again")
        self.loaded = load_model(cfg.card)
        self.teacher = self.loaded.model.to(ctx.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.card_sha256 = sha256_file(cfg.card)
        if resume is not None and resume["teacher_sha256"] != self.card_sha256:
            raise UsageError(f"--resume: {cfg.state_path} was fine-tuned from another card (sha256 "
                             f"{resume['teacher_sha256'][:12]}…), not {cfg.card}")
        self.data = self._open_data()
        from resnet_deploy.precision.qat import QatResNet

        self.student = QatResNet(self.teacher, bits, cfg.quantize_logits).to(ctx.device)
        self.cpu_target, self.bits = cpu_target, bits
        self.amp_dtype = self._amp_dtype()
        self.batches = self._batches()
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=MOMENTUM, nesterov=True)
        total = cfg.iters
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total) / total)))
        if resume is not None:
            self.student.load_state_dict(resume["student"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.calibration = resume["calibration"]
            start, self.train_seconds = int(resume["iteration"]), float(resume["train_seconds"])
            self.reporter.message(f"resuming {cfg.state_path} at iteration {start} of {total}")
        else:
            self.student.fit_weight_clipping()  # before training: the clip factors then stay (resume: in the state)
            self.calibration = self._calibrate()
            start, self.train_seconds = 0, 0.0
        self.ema = self._average(resume)
        stop = min(total, cfg.max_iters or total)
        if start >= stop:
            raise UsageError(f"nothing to do: {cfg.state_path} is at iteration {start} and the run stops at {stop} "
                             "(raise --max-iters, or drop it to finish the schedule)")
        loss, ips = self._train(start, stop)
        result = FinetuneResult(None, cfg.state_path, stop >= total, stop, total, cpu_target, bits,
                                round(self.train_seconds, 2), ips, loss, self.calibration, notes=self.notes,
                                is_main=ctx.is_main)
        if result.completed and ctx.is_main:
            from trainer.qat_finish import finish

            finish(self, result)
        distributed.barrier(ctx)
        return result

    def _average(self, resume: dict[str, Any] | None) -> AveragedModel | None:
        """The exponential moving average of the student's weights (torch's AveragedModel), what is exported:
        it keeps the last iterations' noise out of the artifact. Made after the clip factors and scales are set."""
        if not self.cfg.ema_decay:
            return None
        ema = AveragedModel(self.student, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay))
        if resume is not None:
            ema.load_state_dict(resume["ema"])
        return ema

    def final_module(self) -> nn.Module:
        """The fake-quant module the artifact is exported from: the weight average, else the last weights."""
        return self.ema.module if self.ema is not None else self.student

    def _load_state(self, bits: int) -> dict[str, Any]:
        from resnet_deploy.checkpoints import torch_load_untrusted

        path = self.cfg.state_path
        if not path.is_file():
            raise UsageError(f"--resume: {path} does not exist (finetune-int8 -o {self.cfg.output} writes it)")
        state = torch_load_untrusted(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError(f"--resume: {path} is not a finetune-int8 state ({STATE_FORMAT!r})")
        saved = state["config"]
        mine = {**{k: getattr(self.cfg, k) for k in RUN_DEFINING if k != "weight_bits"}, "weight_bits": bits}
        differ = [f"{k} {saved.get(k)} (given {mine[k]})" for k in RUN_DEFINING if saved.get(k) != mine[k]]
        if differ:
            raise UsageError(f"--resume: the run in {path} was started with {', '.join(differ)}; give the same "
                             "options to continue it")
        return state

    def _open_data(self) -> Any:
        from trainer.data import open_train_data

        data = open_train_data(self.cfg.data, seed=self.cfg.seed)
        if list(data.class_names) != list(self.loaded.card.class_names):
            raise UsageError(f"--data {self.cfg.data}: its classes ({', '.join(data.class_names[:4])}, …) are not "
                             f"the card's ({', '.join(self.loaded.card.class_names[:4])}, …) in the same order")
        self.reporter.message(data.describe())
        return data

    def _amp_dtype(self) -> torch.dtype | None:
        from resnet_deploy.precision.isa import this_cpu

        amp, device = self.cfg.amp, self.ctx.device
        if amp == "off":
            return None
        if amp == "bf16":
            return torch.bfloat16
        if device.type == "cuda":  # auto: bf16 where the hardware computes it natively
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        flags = set(this_cpu().flags)
        return torch.bfloat16 if flags & {"avx512_bf16", "amx_bf16"} else None

    def _batches(self) -> Any:
        """The trainer's training batches with the card's normalization (its mean/std, not recomputed)."""
        from trainer.data import BatchPlan, decode_images, default_cache_dir
        from trainer.loaders import TensorBatches, WorkerBatches, train_transform

        cfg, ctx, data = self.cfg, self.ctx, self.data
        pre = self.loaded.card.preprocessing
        size = pre.input_size
        plan = BatchPlan(len(data.train_rows), cfg.batch_size, ctx.world_size, ctx.rank, cfg.seed)
        if plan.iters_per_epoch < 1:
            raise UsageError(f"--data {cfg.data}: {len(data.train_rows)} training images, fewer than one global "
                             f"batch of {plan.global_batch}; lower --batch-size")
        self.plan = plan
        if pre.resize_size is None:  # fixed-size images (CIFAR-like): decode once, augment on the device
            if not ctx.is_main:  # rank 0 decodes and caches first; the others then read its cache
                distributed.barrier(ctx)
            decoded = decode_images(data.train, size, cache_dir=default_cache_dir(), threads=cfg.workers or 2)
            if ctx.is_main:
                distributed.barrier(ctx)
            rows = torch.tensor(data.train_rows, dtype=torch.int64)
            return TensorBatches(decoded.images[rows], decoded.labels[rows], plan, device=ctx.device,
                                 mean=pre.mean, std=pre.std, padding=max(1, round(4 * size / 32)),
                                 channels_last=False, seed=cfg.seed)
        transform = train_transform("crop-flip", size, 0, None, pre.resize_size)
        return WorkerBatches(data.train, data.train_rows, plan, transform, device=ctx.device, mean=pre.mean,
                             std=pre.std, workers=cfg.workers if cfg.workers is not None else 2,
                             channels_last=False, lighting_std=0.0, seed=cfg.seed)

    def _calibrate(self) -> dict[str, Any]:
        from resnet_deploy.precision.calibration import load_calibration_images
        from resnet_deploy.precision.qat import calibrate

        cfg = self.cfg
        images = load_calibration_images(cfg.data, self.loaded.card.preprocessing, samples=cfg.calib_samples,
                                         check_samples=1, seed=cfg.seed)
        tensor = torch.from_numpy(images.images)
        batches = [tensor[i:i + 64].to(self.ctx.device) for i in range(0, len(tensor), 64)]
        summary = calibrate(self.student, batches, cfg.calib_method)
        self.reporter.message(f"calibrated {summary.quantizers} activation quantizers on {summary.images} images "
                              f"({summary.method}); weights {self.bits}-bit for CPU class {self.cpu_target}")
        return {"method": summary.method, "images": summary.images, "data": images.source,
                "set_sha256": images.sha256, "seed": cfg.seed}

    # --- the loop ----------------------------------------------------------------------------------

    def _train(self, start: int, stop: int) -> tuple[float, float]:
        cfg, ctx = self.cfg, self.ctx
        model: nn.Module = self.student
        if ctx.enabled:
            model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        save_every = cfg.save_every or max(1, cfg.iters // 10)
        self.student.train()
        self.reporter.start_training(total=stop, completed=start)
        images, seconds, loss_value, logged = 0, 0.0, float("nan"), start
        mark = time.perf_counter()
        try:
            for iteration in range(start, stop):
                x, y = self.batches.get(iteration)
                loss = self._step(model, x, y)
                done = iteration + 1
                if done % 10 == 0 or done == stop or done % save_every == 0:
                    loss_value = float(loss)  # synchronizes with the device
                    if not math.isfinite(loss_value):
                        raise CheckFailed(f"fine-tuning diverged at iteration {done} (loss {loss_value}); lower --lr")
                    now = time.perf_counter()
                    images += (done - logged) * int(y.shape[0]) * ctx.world_size
                    logged = done
                    seconds += now - mark
                    self.train_seconds += now - mark
                    mark = now
                    self.reporter.training_step(done, loss=loss_value, lr=self.scheduler.get_last_lr()[0],
                                                images_per_s=images / seconds if seconds else 0.0)
                if done % save_every == 0 or done == stop:
                    self._save(done)
                    mark = time.perf_counter()
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted; {cfg.state_path} holds the last saved iteration (if any was "
                                      "saved): continue with --resume") from None
        finally:
            self.reporter.end_training()
            self.batches.close()
        return loss_value, images / seconds if seconds else 0.0

    def _step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distillation from the FP32 teacher (KL at temperature T, scaled by T²) plus weighted cross-entropy."""
        from trainer.evaluate import autocast

        t = self.cfg.temperature
        with torch.no_grad(), autocast(self.ctx.device, self.amp_dtype):
            teacher = self.teacher(x).float()
        with autocast(self.ctx.device, self.amp_dtype):
            student = model(x).float()
        loss = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                        log_target=True) * t * t
        if self.cfg.ce_weight:
            loss = loss + self.cfg.ce_weight * F.cross_entropy(student, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.student)
        return loss.detach()

    def _save(self, iteration: int) -> None:
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        state = {
            "format": STATE_FORMAT, "iteration": iteration, "train_seconds": self.train_seconds,
            "student": {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "calibration": self.calibration, "teacher_sha256": self.card_sha256,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": {**{k: getattr(cfg, k) for k in RUN_DEFINING if k != "weight_bits"},
                       "weight_bits": self.bits},
        }
        with atomic_path(cfg.state_path) as tmp:
            torch.save(state, tmp)

    def lineage(self, result: FinetuneResult) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "format": STATE_FORMAT, "teacher_card": str(cfg.card), "teacher_card_sha256": self.card_sha256,
            "iterations": result.iterations, "batch_size": cfg.batch_size, "world_size": self.ctx.world_size,
            "global_batch": self.plan.global_batch, "lr": cfg.lr, "schedule": "cosine", "momentum": MOMENTUM,
            "temperature": cfg.temperature, "ce_weight": cfg.ce_weight, "seed": cfg.seed, "data": str(cfg.data),
            "quantize_logits": cfg.quantize_logits, "ema_decay": cfg.ema_decay,
            "train_images": len(self.data.train_rows),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "device": str(self.ctx.device), "train_seconds": round(self.train_seconds, 2),
            "calibration": self.calibration, "weight_bits": self.bits, "cpu_target": self.cpu_target,
        }
