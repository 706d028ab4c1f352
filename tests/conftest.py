"""Shared fixtures. Tests make their own small data; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CIFAR10_DIR = REPO.parent / "shared" / "datasets" / "cifar10"

# Two cores are shared by the whole suite: one thread per test process keeps runs predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `resnet-deploy ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "resnet_deploy", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR10_DIR}")
    return CIFAR10_DIR
