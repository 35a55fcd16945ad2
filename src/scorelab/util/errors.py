"""Errors that the command line reports as one clear line (no traceback)."""


class ScorelabError(Exception):
    """Base of the errors a user can fix from the command line."""


class ConfigError(ScorelabError, ValueError):
    """A config value, key or combination that cannot work."""


class NonFiniteLossError(ScorelabError, FloatingPointError):
    """The training loss became NaN or infinite."""


class DivergedError(ScorelabError, FloatingPointError):
    """The training loss, still finite, grew far beyond its first value (divergence)."""


class Interrupted(ScorelabError):
    """A run stopped by a signal (SIGTERM, SIGUSR1: pre-emption) after saving what it had;
    the process exits with 128 + the signal number, as if killed by it."""

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
