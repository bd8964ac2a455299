"""Errors a user can act on.

Anything raised as a :class:`CtcLiveError` is printed by the CLI as one readable message and
ends the command with a non-zero status, without a traceback. Everything else is a bug and
keeps its traceback.
"""


class CtcLiveError(Exception):
    """An error caused by input, configuration or hardware, explained in its message."""


class ConfigError(CtcLiveError):
    """A configuration file that cannot be read or does not validate."""
