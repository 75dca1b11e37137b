"""Errors that the command line reports as one line (exit code 2) instead of a traceback."""


class EnsembleError(Exception):
    """Base class of every error caused by the user's input or configuration.

    The message says what is wrong, the valid choices where there are some, and how to fix it.
    The ``ensemble`` command prints it on one line and exits with code 2.
    """


class DataError(EnsembleError):
    """The data (a folder, an ``.npz`` or a CSV manifest) cannot be used as given."""


class ConfigError(EnsembleError):
    """A member spec, pipeline file or command-line value is invalid."""


class RunError(EnsembleError):
    """A run directory is missing something, or does not match the data or the code."""
