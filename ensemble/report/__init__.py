"""The report.

Every member and combiner scored on the same held-out images — metrics with
intervals, significance tests, shifted and zoomed copies, referral — written as
``metrics.json``, then rendered as Markdown, charts, ``report.html`` and ``leaderboard.csv``.

The top layer of the library: may import every other sub-package.
"""
