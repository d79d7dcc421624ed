"""User-facing errors: the CLI prints these as one line and exits 2 (``--debug`` shows the traceback).

Everything a user can fix by editing a file or a flag (a bad config key, a bad data row, a missing
path) raises a subclass of :class:`UserError` whose message already names the place: the file and
line, the config key path, or the role. Internal bugs raise anything else and keep their traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message is the whole story, one line."""


class ConfigError(UserError):
    """A config file or override that does not fit the typed config."""


class DataError(UserError):
    """A dataset that is missing, empty, or has a row that does not fit its format."""


class RunError(Exception):
    """A run stopped by a failure of its machinery, not of the user's input: an engine or a worker died
    (past its restarts). The message names the role, the worker and the root cause; the CLI prints it as
    one block and exits 1 (``--debug`` shows the traceback)."""


class Interrupted(Exception):
    """The run was stopped by a signal (SIGINT or SIGTERM). The message says what was saved; the CLI
    prints it as one line and exits 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int, resumable: bool = False):
        super().__init__(message)
        self.signum, self.resumable = signum, resumable  # resumable: a checkpoint of this run was saved


DEBUG_ENV = "RAYALIGN_DEBUG"  # set by ``--debug``: tracebacks, ours and Ray's, on the console


def debugging() -> bool:
    import os

    return os.environ.get(DEBUG_ENV) == "1"
