"""Corruptions.

What a microscope, camera, stain or crop can do to a cell image: one vocabulary of kinds
(:mod:`.kinds`), one TensorFlow function per kind (:mod:`.acquisition`), drawn at training
strength by the robust members and at evaluation strength by the seeded shifted and zoomed
copies of the report and fit-stacker (:mod:`.shifts`).

May import :mod:`ensemble.core` and :mod:`ensemble.data`.
"""
