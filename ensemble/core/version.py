"""The package's version and the version of its on-disk formats, for every layer to read.

``ensemble/__init__.py`` re-exports both, so ``ensemble.__version__`` and
``ensemble.FORMAT_VERSION`` keep working; code inside the package imports them from here, so that
no layer imports the package itself (whose ``Ensemble`` is the top layer).
"""

__version__ = "0.1.0"

#: Version of the on-disk layout of split files and run directories. A run written by another
#: format version is refused instead of being misread.
FORMAT_VERSION = 1
