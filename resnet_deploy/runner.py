"""Run a Typer command as a program: known failures end in one `error: ...` line and DESIGN.md's exit
codes, never a traceback.

Library-level (it imports no command), so both `resnet-deploy` and `python -m trainer` use it without
the trainer importing the CLI.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.exceptions import TyperException

from engines.base import EngineError
from resnet_deploy.errors import ResnetDeployError

#: old option names that still parse, and the name they stand for (hidden from --help)
HIDDEN_ALIASES = {"--out": "--output"}


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
    """Run `command` with `argv` and exit with its status."""
    args = rewrite_hidden_aliases(sys.argv[1:] if argv is None else list(argv))
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except TyperException as exc:  # Typer's parsing errors (it vendors click; this is its public base class)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else prog
        print(f"error: {exc.format_message()} (see: {where} --help)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ResnetDeployError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(a bug; rerun with RESNET_DEPLOY_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
