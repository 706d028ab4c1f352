"""Run a Typer command as a program: known failures end in one `error: ...` line and DESIGN.md's exit
codes, never a traceback.

Library-level (it imports no command), so both `resnet-deploy` and `python -m trainer` use it without
the trainer importing the CLI.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Any

import typer
from typer.exceptions import TyperException

from engines.base import EngineError
from resnet_deploy.errors import ResnetDeployError

#: old option names that still parse, and the name they stand for (hidden from --help)
HIDDEN_ALIASES = {"--out": "--output"}
# The machine's state, not a bug, even when the OSError names no file: no space, no permission, read-only, quota.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG})


def rewrite_hidden_aliases(argv: list[str]) -> list[str]:
    """`--out X` / `--out=X` → `--output ...` (options only: nothing after `--` is touched)."""
    rewritten: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":
            return rewritten + argv[index:]
        name, sep, value = token.partition("=")
        rewritten.append(HIDDEN_ALIASES[name] + sep + value if name in HIDDEN_ALIASES else token)
    return rewritten


def run_command(command: typer.core.TyperCommand | typer.core.TyperGroup, argv: list[str] | None, prog: str) -> None:
    """Run `command` with `argv` and exit with its status.

    SIGTERM is handled like SIGINT: both raise KeyboardInterrupt, so the atomic writers and temporary
    folders clean up on the way out, and both end in `error: interrupted`, exit 130. Typer turns
    KeyboardInterrupt into a returned 130 before the branches below could see it, so the handler notes
    the signal. An OSError naming a file (disk full, permission, read-only) is the user's to fix: one
    line naming the path and the reason, exit 2."""
    received: list[int] = []
    _shutdown.update(begun=False, signals=[], code=None)  # a fresh run (tests call this many times in one process)

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        if _shutdown["begun"]:  # exit handlers are running: an exception there is a traceback and a lost exit code
            _shutdown["signals"].append(signum)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, interrupt)
        # Runs after the exit handlers the command registers (multiprocessing joining the decoding workers):
        # a signal that arrived during those still ends in `error: interrupted`, exit 130.
        atexit.unregister(_exit_if_interrupted_late)
        atexit.register(_exit_if_interrupted_late)
    try:
        _run(command, argv, prog, received)
    except SystemExit as exc:
        _shutdown["code"] = exc.code
        atexit.unregister(_shutdown_begins)
        atexit.register(_shutdown_begins)  # registered last, so the first exit handler to run
        raise


_shutdown: dict[str, Any] = {"begun": False, "signals": [], "code": None}


def _shutdown_begins() -> None:
    _shutdown["begun"] = True


def _exit_if_interrupted_late() -> None:
    """The last exit handler: a SIGINT/SIGTERM during the exit handlers gives the exit every other interrupt
    gives (the work may be done, but whoever sent the signal is told it was cut short), never a traceback."""
    if not _shutdown["signals"] or _shutdown["code"] == 130:
        return
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        print("error: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def _run(command: typer.core.TyperCommand | typer.core.TyperGroup, argv: list[str] | None, prog: str,
         received: list[int]) -> None:
    args = rewrite_hidden_aliases(sys.argv[1:] if argv is None else list(argv))
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except TyperException as exc:  # Typer's parsing errors (it vendors click; this is its public base class)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else prog
        print(f"error: {exc.format_message()} (see: {where} --help)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        result = 130
    except (ResnetDeployError, EngineError) as exc:
        if received and exc.exit_code != 130:  # the signal cut an import or a call short and it failed for that
            _interrupted()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if received:
            _interrupted()
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            raise
        if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _MACHINE_ERRNOS):
            where = f"{exc.filename}: " if exc.filename is not None else ""
            print(f"error: {where}{exc.strerror or exc} (errno {exc.errno})", file=sys.stderr)
            sys.exit(2)
        print(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(a bug; rerun with RESNET_DEPLOY_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    if received or result == 130:  # 130: Typer's answer to KeyboardInterrupt
        _interrupted()
    sys.exit(result if isinstance(result, int) else 0)


def _interrupted() -> None:
    """After SIGINT/SIGTERM whatever failed on the way out failed because of it (an interrupted `import onnxruntime`
    reads as "not installed"): say what happened, not what it broke."""
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
