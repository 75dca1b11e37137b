"""Corruptions.

What a microscope, camera, stain or crop can do to a cell image — the training
augmentation (:mod:`.acquisition`, TensorFlow, per batch) and the seeded evaluation copies of the
report (:mod:`.shifts`, NumPy, per image).

May import :mod:`ensemble.core` and :mod:`ensemble.data`.
"""
