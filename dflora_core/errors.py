"""User-facing errors: one line, no traceback at the command line."""


class DfloraError(Exception):
    """An error caused by the user's input or environment (bad config, missing file, unknown name).

    The CLI prints ``str(err)`` on one line and exits with status 2; library callers can catch it.
    """


class ConfigError(DfloraError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"config error: {field}: {message}")


class DataError(DfloraError):
    """A data file is missing or unreadable; the message names the file (and line when known)."""


class ModelError(DfloraError):
    """A model cannot be found, loaded or patched; the message says what to do."""


class RunBusyError(DfloraError):
    """A run folder is locked by another live process (it is running there); the message names the holder."""


class DfloraWarning(UserWarning):
    """Something the user should know but that does not stop the run (the CLI prints it on one line)."""
