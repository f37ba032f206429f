"""Exceptions with messages meant for the user.

Every error a user can cause (a typo in a config, an unknown dataset, a missing teacher
checkpoint) is raised as a subclass of `DistillError`. The CLI prints its message on one
line, without a traceback, and exits with the error's `exit_code`: 2 for bad input
(detected before any training starts), 3 for a diverged run, 75 for a preempted one.
"""

import errno


class DistillError(Exception):
    """Base class of the errors the CLI reports as one clear message.

    Attributes:
        exit_code: the CLI's exit status for this error (2: bad input).
    """

    exit_code = 2


class ConfigError(DistillError, ValueError):
    """A config key, value or combination that is not valid."""


class UserCodeError(ConfigError):
    """The user's own code (a Python config file) raised: the CLI shows that traceback,
    then one line naming the file."""


class DatasetError(DistillError):
    """A dataset that is unknown, not prepared, or cannot be read."""


class CheckpointError(DistillError):
    """A checkpoint that is missing, corrupt, or does not match the config."""


class DivergenceError(DistillError):
    """The loss or the gradients became NaN or Inf; the last good checkpoint is kept."""

    exit_code = 3


class Preempted(DistillError):
    """SIGTERM/SIGINT arrived: the current step finished and a checkpoint was written.

    Exit code 75 (EX_TEMPFAIL): a scheduler should simply run the same command again.
    """

    exit_code = 75


def no_space_left(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) is "no space left on device".

    Orbax reports a failed asynchronous write wrapped in its own errors, several layers
    deep; the CLI turns any of them into one line."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
