"""The errors a user can meet. The CLI turns each into one `error:` line and an exit code.

Exit codes follow DESIGN.md: 2 for bad usage or input, 1 for a failed check.
"""

from __future__ import annotations

from engines.base import first_line as first_line  # re-exported: the first line of an exception, for messages


class ResnetDeployError(Exception):
    """A known failure with a message meant for the user."""

    exit_code = 1


class UsageError(ResnetDeployError):
    """Bad usage or bad input: a missing file, a wrong shape, an absent backend."""

    exit_code = 2


class CheckFailed(ResnetDeployError):
    """A verification or accuracy gate failed; the work itself ran."""

    exit_code = 1


class BackendUnavailable(UsageError):
    """An optional backend (TensorRT, CUDA, OpenVINO) is not installed or not usable here."""


class Interrupted(ResnetDeployError):
    """Ctrl-C or SIGTERM, after the command said what was completed (exit 130, as a shell reports SIGINT)."""

    exit_code = 130
