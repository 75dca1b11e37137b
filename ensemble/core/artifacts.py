"""Loading saved models safely, with errors that name the file.

Keras ``.keras`` files are loaded with ``safe_mode=True``: a file carrying a ``Lambda`` layer (or
any other arbitrary Python code) is refused instead of being executed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ensemble.core.errors import RunError


def load_keras_model(path: Path, *, compile: bool = False):
    """Load a ``.keras`` model in safe mode.

    Args:
        path: the ``.keras`` file.
        compile: restore the loss, metrics and optimizer too (resuming training); a model
            loaded to predict needs none of them. A student's loss must be registered first
            (import :mod:`ensemble.members.distillation`).

    Raises:
        RunError: missing, truncated or corrupt file, or one that safe mode refuses (code in a
            ``Lambda`` layer); the message names the file.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise RunError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise RunError(f"model file {path} is truncated or not a .keras archive; retrain it")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=compile)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise RunError(
                f"refusing to load {path}: it contains a Lambda layer (arbitrary code), which "
                "safe mode does not run. Only load models you trained with this tool."
            ) from None
        raise RunError(f"cannot load model {path}: {error}") from None
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise RunError(f"cannot load model {path}: {error}") from None
