"""The package's errors, split by whose fault they are.

:class:`EnsembleError` and its subclasses are caused by the user's input or configuration: the
command line prints them as one line and exits with code 2. :class:`NotFittedError` is a bug in
the calling code (a fitted-state method called before ``fit``); it is deliberately *not* an
:class:`EnsembleError`, so the command line shows its traceback instead of blaming the input.
"""


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


class NotFittedError(RuntimeError):
    """A combiner or scaler was used before it was fitted: a bug in the code that called it.

    Args:
        what: the class that is not fitted, e.g. ``"SoftVote"``.
    """

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is not fitted yet: call fit() first (or load a fitted one). This is a bug "
            "in the code that called it, not a problem with your input; please report it."
        )


def did_you_mean(value: object, choices) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` to ``value``, or ``""``.

    Example:
        >>> did_you_mean("stak", ["hard", "soft", "stack"])
        " Did you mean 'stack'?"
    """
    import difflib

    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
