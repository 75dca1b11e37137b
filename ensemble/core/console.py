"""A quiet console: TensorFlow's start-up lines and the libraries' warnings stay hidden.

TensorFlow 2.21 writes its start-up lines (the absl ``InitializeLog`` notice, oneDNN,
``cpu_feature_guard``; on a machine without a GPU driver, the CUDA ones) from C++ while its
shared libraries load. The oneDNN line is written before ``TF_CPP_MIN_LOG_LEVEL`` is read, so
that variable alone does not hide it, and ``TF_ENABLE_ONEDNN_OPTS=0`` would hide it only by
changing the numerics. What works: while ``import tensorflow`` runs, file descriptor 2 points at
``/dev/null``; after it, ``TF_CPP_MIN_LOG_LEVEL=3`` keeps later C++ lines quiet (such as
"oneDNN supports DT_INT32 only on platforms with AVX-512"), the ``tensorflow`` and ``absl``
Python loggers drop the tf.function retracing warnings, and Python warnings raised inside
TensorFlow, Keras and keras-cv are ignored. Errors still arrive as Python exceptions.

``ensemble --verbose`` skips all of this. Variables the user has set are never overridden.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from contextlib import contextmanager

#: Environment read by TensorFlow's C++ runtime when it starts: errors and below are dropped
#: (real failures reach the user as Python exceptions).
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}

#: Python loggers of the libraries, set to ERROR: tf.function retracing warnings and the like.
QUIET_LOGGERS = ("tensorflow", "absl", "keras", "h5py")

#: Modules whose Python warnings are ignored (a regular expression on the warning's module).
QUIET_WARNING_MODULES = r"(tensorflow|tf_keras|keras|keras_cv|absl|google\.protobuf)(\.|$)"


_VERBOSE = [False]


def set_verbose(flag: bool) -> None:
    """Ask for TensorFlow's lines and the libraries' warnings (``ensemble --verbose``)."""
    _VERBOSE[0] = bool(flag)


def verbose() -> bool:
    """True after ``--verbose``/``--debug`` in this process, or with ``ENSEMBLE_VERBOSE`` set."""
    return _VERBOSE[0] or bool(os.environ.get("ENSEMBLE_VERBOSE"))


def quiet_console() -> None:
    """Hide TensorFlow's start-up lines, retracing warnings and the libraries' warnings.

    Call it before TensorFlow is first imported (the ``ensemble`` command does, unless
    ``--verbose``); the start-up lines are then hidden whenever the import happens. Calling it
    again, or after TensorFlow was imported, only sets what is still missing.

    Example:
        >>> quiet_console()  # doctest: +SKIP
        >>> import tensorflow  # prints nothing  # doctest: +SKIP
    """
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=QUIET_WARNING_MODULES)
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _SilentImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _SilentImport("tensorflow"))


@contextmanager
def silenced_stderr():
    """Point file descriptor 2 (C and C++ writes included) at ``/dev/null`` inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _SilentImport(importlib.abc.MetaPathFinder):
    """Finds one top-level package the usual way, then runs its import with stderr silenced."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        """Spec of ``package`` whose loader silences stderr; ``None`` for every other module."""
        if fullname != self.package:
            return None
        sys.meta_path.remove(self)  # once: the package's own submodules import normally
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilentLoader(spec.loader)
        return spec


class _SilentLoader(importlib.abc.Loader):
    """Delegates to the real loader; executing the module happens with stderr silenced."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        """Let the real loader create the module."""
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        """Run the package's ``__init__`` (and everything it imports) with stderr silenced."""
        module.__loader__ = self.loader
        module.__spec__.loader = self.loader
        with silenced_stderr():
            self.loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)
