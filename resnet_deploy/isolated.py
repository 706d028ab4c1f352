"""Run one function in a child process, so that Ctrl-C and SIGTERM can stop it.

A native library call (ONNX Runtime folding an all-constant Loop of 2^40 trips, onnxslim evaluating a
constant subgraph) holds the main thread: Python runs a signal handler only once the call returns, which
may be never. In a child the parent keeps waiting in Python, so the handler runs, and the child is killed
on the way out. The call and its result cross as pickles in a private temporary folder (our own
process on both ends); an exception the function raises is raised again in the parent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_deploy.errors import ResnetDeployError

_CHILD = "from resnet_deploy.isolated import _child; _child()"


def run_isolated(function: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a child process (a module-level function: it is found by name there).

    `what` names the work in the error when the child dies without an answer (killed, out of memory)."""
    import resnet_deploy

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-isolated-") as tmp:
        call, answer = Path(tmp) / "call.pickle", Path(tmp) / "answer.pickle"
        call.write_bytes(pickle.dumps((function.__module__, function.__qualname__, args, kwargs)))
        package_root = str(Path(resnet_deploy.__file__).resolve().parents[1])  # this very copy of the code
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                           os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(call), str(answer)], env=env,
                                 stdin=subprocess.DEVNULL, stdout=_stderr_fd(), start_new_session=True)
        try:
            code = child.wait()  # a signal handler raising KeyboardInterrupt ends this wait
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if not answer.is_file():
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise ResnetDeployError(f"{what} stopped without an answer (the process doing it ended with {how}; "
                                    "out of memory?)")
        ok, value = pickle.loads(answer.read_bytes())
    if ok:
        return value
    raise value


def _stderr_fd() -> int | None:
    """The child's stdout goes to our stderr: stdout carries only results (`--json`)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a descriptor
        return subprocess.DEVNULL


def _child() -> None:
    """The child's side: run the pickled call, pickle back its value or its exception."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    _die_with_parent()
    call, answer = Path(sys.argv[1]), Path(sys.argv[2])
    module, name, args, kwargs = pickle.loads(call.read_bytes())
    try:
        import importlib

        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        result: tuple[bool, Any] = (True, target(*args, **kwargs))
    except Exception as exc:
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            traceback.print_exc()
        result = (False, exc)
    try:
        data = pickle.dumps(result)
    except Exception:  # an exception that does not pickle: its type and message still say what failed
        data = pickle.dumps((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]}")))
    tmp = answer.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(answer)  # all or nothing: a child killed mid-write leaves no answer


def _die_with_parent() -> None:
    """Linux: the kernel kills the child when the parent dies (`kill -9` of the command leaves no orphan
    folding a Loop forever)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
