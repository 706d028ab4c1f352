"""`resnet-deploy train` where a user meets it: bad numbers, one class, odd file names, unreadable images,
two runs in one folder, unwritable output, divergence, Ctrl-C/SIGTERM — each one `error:` line and an exit
code, never a traceback or a non-finite model card. Tiny 8x8 data keeps each run to seconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.card import read_card
from trainer import TrainConfig, train
from trainer.progress import Reporter
from trainer.runlock import RunLock

SIZE = 8
FAST = ["--image-size", str(SIZE), "--batch-size", "8", "--device", "cpu", "--workers", "1"]


def make_folder(root: Path, classes: int = 2, per_class: int = 12, names: list[str] | None = None) -> Path:
    """train/ and test/ with `classes` classes of noisy images, class k brighter in channel k % 3."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
                pixels[..., label % 3] += 150
                name = names[index % len(names)] % index if names else f"{index}.png"
                Image.fromarray(pixels).save(folder / name)
    return root


def run_train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from resnet_deploy.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--arch", "resnet20", *args])
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out, captured.err


def one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert "Traceback" not in err and "unexpected" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("tiny"))


def test_python_m_trainer_is_the_plot_tool_and_imports_no_cli(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shown = subprocess.run([sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "plot" in shown.stdout, shown.stderr
    old = subprocess.run([sys.executable, "-m", "trainer", "--arch", "resnet20"], capture_output=True, text=True,
                         env=env)
    assert old.returncode == 2 and "resnet-deploy train" in one_error(old.stderr)
    code = ("import sys, trainer, trainer.__main__, trainer.loop; "
            "print(sorted(m for m in sys.modules if m.startswith(('resnet_deploy.cli', 'resnet_deploy.commands'))))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-0.1"), ("--epochs", "nan"),
     ("--weight-decay", "-1"), ("--weight-decay", "nan"), ("--batch-size", "0"), ("--eval-every", "0"),
     ("--save-every", "-2"), ("--warmup-iters", "-1"), ("--max-iters", "0")],
)
def test_meaningless_numbers_are_refused_before_any_work(tiny, tmp_path, capsys, flag, value):
    code, out, err = run_train(capsys, "--data", str(tiny), "--out", str(tmp_path / "run"), *FAST, "--max-iters", "2",
                               flag, value)  # a bounded run, should a check ever let the value through
    assert code == 2 and flag in one_error(err) and out == ""
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_fewer_than_two_classes_is_refused(tmp_path, capsys):
    data = make_folder(tmp_path / "one", classes=1)
    code, _, err = run_train(capsys, "--data", str(data), "--out", str(tmp_path / "run"), *FAST, "--iters", "2")
    assert code == 2 and "at least two classes" in one_error(err)


def test_non_utf8_file_names_train_and_cache(tmp_path, capsys):
    data = make_folder(tmp_path / "odd", names=[os.fsdecode(b"caf\xe9_%d.png")])  # Latin-1, not UTF-8
    args = ["--data", str(data), *FAST, "--iters", "2", "--cache-dir", str(tmp_path / "cache")]
    code, out, err = run_train(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "2 iterations, finished" in out
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # keyed by the raw bytes of the names


def test_unreadable_images_are_named_or_skipped_and_counted(tiny, tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    (data / "train" / "class_0" / "broken.png").write_bytes(b"not a png at all")
    args = ["--data", str(data), *FAST, "--iters", "2", "--no-cache"]
    code, _, err = run_train(capsys, *args, "--out", str(tmp_path / "a"))
    line = one_error(err)
    assert code == 2 and "broken.png" in line and "--skip-bad" in line
    code, out, err = run_train(capsys, *args, "--out", str(tmp_path / "b"), "--skip-bad")
    assert code == 0, err
    assert "skipped 1 unreadable image" in out and "skipped 1 unreadable" in err
    # The worker loader checks the files first, so its data order is fixed without them too.
    code, out, err = run_train(capsys, *args, "--out", str(tmp_path / "c"), "--skip-bad", "--loader", "workers",
                               "--recipe", "imagenet")
    assert code == 0, err
    assert "skipped 1 unreadable image" in out


def test_a_second_training_into_a_busy_run_folder_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out).acquire()  # as a training in progress holds it
    try:
        code, _, err = run_train(capsys, "--data", str(tiny), "--out", str(out), *FAST, "--iters", "2")
    finally:
        lock.release()
    line = one_error(err)
    assert code == 2 and f"pid {os.getpid()}" in line and str(out) in line
    assert not (out / "last.pt").exists()

    # A holder killed outright leaves the file but not the lock: the next run goes ahead.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from trainer.runlock import RunLock; "
                               f"RunLock(__import__('pathlib').Path({str(out)!r})).acquire(); print('held', "
                               "flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    code, out_text, err = run_train(capsys, "--data", str(tiny), "--out", str(out), *FAST, "--iters", "2")
    assert code == 0, err


def test_unwritable_output_is_one_error_naming_the_path(tiny, tmp_path, capsys):
    code, _, err = run_train(capsys, "--data", str(tiny), "--out", "/proc/no-such/run", *FAST, "--iters", "2")
    assert code == 2 and "/proc/no-such/run" in one_error(err)

    out = tmp_path / "run"
    (out / "last.safetensors").mkdir(parents=True)  # the final card cannot replace a folder
    (out / "last.safetensors" / "keep").write_text("x")
    code, _, err = run_train(capsys, "--data", str(tiny), "--out", str(out), *FAST, "--iters", "2")
    line = one_error(err)
    assert code == 2 and f"cannot write {out / 'last.safetensors'}" in line and "last.pt holds iteration 2" in line


def test_divergence_stops_with_a_resume_hint_and_no_non_finite_file(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_train(capsys, "--data", str(tiny), "--out", str(out), *FAST, "--iters", "50",
                             "--lr", "1e30", "--save-every", "1", "--eval-every", "1")
    line = one_error(err)
    assert code == 1 and "diverged" in line and "--resume" in line and str(out / "last.pt") in line
    for path in out.glob("*.safetensors"):
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path
    state = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


class _Recording(Reporter):
    def __init__(self) -> None:
        self.total: int | None = None
        self.rates: list[float] = []

    def start_training(self, total: int, completed: int) -> None:
        self.total = total

    def training_step(self, iteration: int, *, loss: float, lr: float, images_per_s: float) -> None:
        self.rates.append(images_per_s)


def test_the_bar_counts_to_max_iters_and_shows_the_summarys_images_per_s(tiny, tmp_path):
    reporter = _Recording()
    result = train(TrainConfig(arch="resnet20", data=tiny, image_size=SIZE, batch_size=8, iters=8000, max_iters=4,
                               device="cpu", out=tmp_path / "run", no_cache=True), reporter)
    assert reporter.total == 4  # not the schedule's 8000: the bar's ETA is this run's
    assert result.iters == 4 and not result.completed
    assert reporter.rates[-1] == pytest.approx(result.images_per_s)
    card = read_card(tmp_path / "run" / "last.safetensors")
    assert card is not None and card.metrics["images_per_s"] == pytest.approx(result.images_per_s, abs=0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_says_where_to_resume_and_keeps_the_checkpoint(tiny, tmp_path, signum):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "resnet_deploy", "train", "--arch", "resnet20", "--data", str(tiny),
               "--out", str(out), *FAST, "--iters", "100000", "--save-every", "2", "--eval-every", "1000",
               "--no-cache"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    line = one_error(err)
    assert line.startswith("error: interrupted at iteration ") and "--resume" in line and str(out) in line
    state = torch.load(out / "last.pt", weights_only=True)  # the last completed checkpoint is intact
    assert state["position"]["iteration"] % 2 == 0 and state["position"]["iteration"] >= 2
    assert not list(out.glob(".*.tmp"))


def test_training_progress_is_plain_lines_in_a_log(tiny, tmp_path):
    """stderr a pipe (CI, `2> log`): the decode and train bars become plain lines, with loss, lr and img/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "RESNET_DEPLOY_PROGRESS_INTERVAL": "0"}
    command = [sys.executable, "-m", "resnet_deploy", "train", "--arch", "resnet20", "--data", str(tiny),
               "--out", str(tmp_path / "run"), *FAST, "--iters", "6", "--eval-every", "3", "--no-cache"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    train_lines = re.findall(r"^train: (\d+)/6 \(\d+%\), \d:\d\d:\d\d elapsed.*$", proc.stderr, re.M)
    assert len(train_lines) >= 3 and train_lines[-1] == "6", proc.stderr
    assert re.search(r"^train: .*loss \d+\.\d{4}, lr [\d.e-]+, speed [\d,]+ img/s", proc.stderr, re.M), proc.stderr
    assert re.search(r"^decode training images: \d+/\d+ \(100%\)", proc.stderr, re.M), proc.stderr
    assert re.search(r"^iter 3: train loss .* top-5 [\d.]+ %$", proc.stderr, re.M), proc.stderr  # one line each
    assert "━" not in proc.stderr and "\x1b[" not in proc.stderr
