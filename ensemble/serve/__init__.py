"""Serving.

A fitted run applied to new images — the fitted ensemble (members, temperatures,
combiners and referral loaded and verified once), the public ``Ensemble`` API, ``predict`` on a
folder a chunk at a time, prediction files, the review gallery and ``predict --ray``.

May import every layer below it; never the report.
"""
