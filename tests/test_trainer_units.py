"""Trainer pieces that need no training: recipes and schedules, the data order, tensor augmentation,
checkpoint RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from resnet_deploy.errors import UsageError
from trainer.augment import mix_seed, random_crop_flip
from trainer.checkpoint import load_training_state, rng_state, save_training_state, set_rng_state
from trainer.data import BatchPlan
from trainer.recipes import StepFactor, cifar_recipe, get_recipe, imagenet_recipe, resolve_schedule


def test_cifar_recipe_is_the_papers():
    schedule = resolve_schedule(cifar_recipe(20), num_train=50_000)
    assert (schedule.global_batch, schedule.lr, schedule.momentum, schedule.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert schedule.total_iters == 64_000
    assert schedule.milestones == (32_000, 48_000)
    assert schedule.warmup_iters == 0
    assert schedule.notes == []
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(31_999) == pytest.approx(0.1)
    assert schedule.lr_at(32_000) == pytest.approx(0.01)
    assert schedule.lr_at(48_000) == pytest.approx(0.001)
    assert schedule.eval_every == 1000


def test_resnet110_warms_up_at_0_01_for_400_iterations():
    schedule = resolve_schedule(cifar_recipe(110), num_train=50_000)
    assert schedule.warmup_iters == 400
    assert schedule.lr_at(0) == pytest.approx(0.01)
    assert schedule.lr_at(399) == pytest.approx(0.01)
    assert schedule.lr_at(400) == pytest.approx(0.1)


def test_larger_batch_scales_lr_linearly_and_iterations_inversely_and_says_so():
    schedule = resolve_schedule(cifar_recipe(110), num_train=50_000, batch_size=256)
    assert schedule.lr == pytest.approx(0.2)
    assert schedule.total_iters == 32_000
    assert schedule.milestones == (16_000, 24_000)
    assert schedule.warmup_iters == 200
    assert schedule.warmup_lr == pytest.approx(0.02)
    assert len(schedule.notes) == 1
    assert "0.1 → 0.2" in schedule.notes[0] and "16000/24000" in schedule.notes[0]


def test_recipe_batch_is_split_across_processes_by_default():
    schedule = resolve_schedule(cifar_recipe(20), num_train=50_000, world_size=2)
    assert (schedule.per_process_batch, schedule.global_batch, schedule.lr) == (64, 128, 0.1)
    assert schedule.notes == []
    with pytest.raises(UsageError, match="does not split"):
        resolve_schedule(cifar_recipe(20), num_train=50_000, world_size=3)


def test_iters_compress_the_schedule_keeping_milestone_fractions():
    schedule = resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000)
    assert schedule.total_iters == 8000
    assert schedule.milestones == (4000, 6000)
    assert any("8000 iterations" in note for note in schedule.notes)
    by_epochs = resolve_schedule(cifar_recipe(20), num_train=50_000, epochs=10)
    assert by_epochs.total_iters == 10 * (50_000 // 128)


def test_a_short_cut_of_a_long_schedule_evaluates_often_enough_to_draw_a_curve():
    whole = resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000)
    assert whole.eval_every == 800
    cut = resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000, max_iters=300)
    assert cut.eval_every == 30 and cut.total_iters == 8000  # ten points, not one at iteration 300
    assert any("every 30 iterations" in note and "300 of the schedule's 8000" in note for note in cut.notes)
    # a resumed rest long enough for 5 points keeps the schedule's interval (the same log as one run)
    assert resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000, start=300).eval_every == 800
    assert resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000, start=7900).eval_every == 10
    assert resolve_schedule(cifar_recipe(20), num_train=50_000, iters=8000, max_iters=3).eval_every == 1
    assert resolve_schedule(cifar_recipe(20), num_train=50_000, eval_every=7, max_iters=30).eval_every == 7


def test_explicit_lr_is_not_rescaled():
    schedule = resolve_schedule(cifar_recipe(20), num_train=50_000, batch_size=64, lr=0.1)
    assert schedule.lr == 0.1
    assert schedule.total_iters == 128_000


def test_imagenet_recipe_uses_epochs_with_steps_at_30_and_60():
    schedule = resolve_schedule(imagenet_recipe(50), num_train=1_281_167)
    per_epoch = 1_281_167 // 256
    assert schedule.total_iters == 90 * per_epoch
    assert schedule.milestones == (30 * per_epoch, 60 * per_epoch)
    assert schedule.eval_every == per_epoch
    assert imagenet_recipe(50).scale_range == (256, 480)


def test_bad_schedule_options_are_usage_errors():
    with pytest.raises(UsageError, match="not both"):
        resolve_schedule(cifar_recipe(20), num_train=1000, iters=10, epochs=1)
    with pytest.raises(UsageError, match="larger than"):
        resolve_schedule(cifar_recipe(20), num_train=100)
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("mnist", 20)


def test_batch_plan_ranks_are_disjoint_and_cover_the_global_batch():
    single = BatchPlan(1000, 32, 1, 0, seed=3)
    ranks = [BatchPlan(1000, 16, 2, r, seed=3) for r in range(2)]
    for iteration in (0, 5, 31, 32, 70):  # 31 iterations per epoch: 31 and 70 cross epochs
        together = torch.cat([plan.indices(iteration) for plan in ranks])
        assert torch.equal(together, single.indices(iteration))
        assert len(set(together.tolist())) == 32
    assert not torch.equal(single.order(0), single.order(1))
    assert torch.equal(single.order(2), BatchPlan(1000, 32, 1, 0, seed=3).order(2))


def test_crop_flip_takes_windows_of_the_padded_image_reproducibly():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    gen = torch.Generator()
    out = random_crop_flip(x, 2, gen.manual_seed(mix_seed(0, 7)))
    again = random_crop_flip(x, 2, gen.manual_seed(mix_seed(0, 7)))
    assert out.shape == x.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[b], w) for w in windows)


def test_step_factor_survives_the_scheduler_state_dict():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, StepFactor((3,), 0.1, 1, 0.5))
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["milestones"] == (3,)
    fresh = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=0.1), StepFactor((), 1, 0, 1))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0](5) == pytest.approx(0.1)


def test_checkpoint_rng_state_loads_with_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_training_state(tmp_path / "last.pt", {
        "rng": rng_state(), "model": {}, "optimizer": {}, "scheduler": {}, "position": {"iteration": 4},
        "schedule": {}, "config": {}, "card": "{}",
    })
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = torch.load(path, weights_only=True)  # plain tensors, lists and numbers only
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert load_training_state(path).iteration == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_a_foreign_file(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(UsageError, match="not a trainer checkpoint"):
        load_training_state(tmp_path / "w.pt")
    with pytest.raises(UsageError, match="does not exist"):
        load_training_state(tmp_path / "missing.pt")
