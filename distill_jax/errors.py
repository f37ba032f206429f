"""Exceptions with messages meant for the user.

Every error a user can cause (a typo in a config, an unknown dataset, a missing teacher
checkpoint) is raised as a subclass of `DistillError`. The CLI prints its message on one
line and exits with code 2, without a traceback, before any training starts.
"""


class DistillError(Exception):
    """Base class of the errors the CLI reports as one clear message."""


class ConfigError(DistillError, ValueError):
    """A config key, value or combination that is not valid."""


class DatasetError(DistillError):
    """A dataset that is unknown, not prepared, or cannot be read."""


class CheckpointError(DistillError):
    """A checkpoint that is missing, corrupt, or does not match the config."""
