"""blood-ensemble: classify blood-cell images with an ensemble of separately trained CNN members."""

__version__ = "0.1.0"

#: Version of the on-disk layout of split files and run directories. A run written by another
#: format version is refused instead of being misread.
FORMAT_VERSION = 1
