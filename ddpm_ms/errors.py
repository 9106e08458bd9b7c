"""The errors a user can cause, in one place: each message is one line, and the commands print it as
``error: <message>`` with exit status 2 (:func:`ddpm_ms.cli.run_main`). Imports nothing heavy."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config value, a folder); the message names it in one line."""


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong."""


class DataError(UserError, RuntimeError):
    """A dataset is missing, corrupt or does not fit the config."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, fails its integrity check or does not fit the model."""


class OutputError(UserError, RuntimeError):
    """An output folder or file cannot be used or written."""


class RunLocked(OutputError):
    """Another process is training into the same run folder."""


class TrainingDiverged(UserError, RuntimeError):
    """Too many optimizer steps in a row had non-finite gradients."""


class KernelBuildError(UserError, RuntimeError):
    """The CPU kernel library could not be built or loaded."""


def first_line(exc):
    """The first non-empty line of an exception's message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
