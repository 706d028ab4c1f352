"""What keeps a run folder sound when something goes wrong: write errors named by path, no non-finite
weights on disk, and SIGTERM treated like Ctrl-C so the run ends with one `error:` line."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import torch

from resnet_deploy.errors import ResnetDeployError


class TrainingInterrupted(ResnetDeployError):
    """Ctrl-C or SIGTERM during training; the last completed checkpoint is intact."""

    exit_code = 130


class WriteFailed(ResnetDeployError):
    """A file of the run could not be written (disk full, permissions, a read-only folder): the machine's state,
    the user's to fix, so exit 2 like every other command's write failure (`runner.run_command`)."""

    exit_code = 2


@contextlib.contextmanager
def writing(path: Path, what: str = "") -> Iterator[None]:
    """Turn the ways a write fails (OSError, safetensors' and torch's own errors) into one named error."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}{what}") from None
    except (SafetensorError, RuntimeError) as exc:  # torch.save and safetensors wrap the OSError
        raise WriteFailed(f"cannot write {path}: {exc}{what}") from None


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one device sync)."""
    flags = [torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, so cleanup and the message are Ctrl-C's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
