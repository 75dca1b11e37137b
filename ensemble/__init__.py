"""blood-ensemble: classify blood-cell images with an ensemble of separately trained CNN members.

The public Python API is :class:`Ensemble` (``from ensemble import Ensemble``), imported on
first use so that ``import ensemble`` stays light (no NumPy, TensorFlow or XGBoost).
"""

from ensemble.core.version import FORMAT_VERSION, __version__

__all__ = ["Ensemble", "FORMAT_VERSION", "__version__"]


def __getattr__(name: str):
    """``ensemble.Ensemble``, imported when first asked for (PEP 562)."""
    if name == "Ensemble":
        from ensemble.core.console import quiet_console, verbose

        if not verbose():
            quiet_console()  # before the import below loads TensorFlow
        from ensemble.serve.ensemble import Ensemble

        return Ensemble
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
