"""Data.

Any labelled image source (class folders, ``.npz``, ``path,label`` CSV) read into a
``Dataset``; decoding images; the audit (unreadable files, duplicates, non-cell pictures,
colour casts); the leak-free split; synthetic cells for the demo and tests.

May import :mod:`ensemble.core` only.
"""
