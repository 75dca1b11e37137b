"""Foundations every layer may use.

Errors and their exit codes, atomic file writes, the spec
field checks, the quiet console, progress lines, safe model loading and the offline HTML shell.

Owns nothing about blood cells, members or runs. Imports no other sub-package of ``ensemble``.
"""
