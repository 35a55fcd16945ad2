"""Errors that the command line reports as one clear line (no traceback)."""


class ScorelabError(Exception):
    """Base of the errors a user can fix from the command line."""


class ConfigError(ScorelabError, ValueError):
    """A config value, key or combination that cannot work."""


class NonFiniteLossError(ScorelabError, FloatingPointError):
    """The training loss became NaN or infinite."""
