"""The combiner registry: every combiner by name, voting and feature-based alike.

:func:`registered_combiners` imports the modules that register combiners (the voting ones and
the XGBoost stacker), so that fit-stacker, predict and report see the same list. A new
combiner module adds its import here.
"""

from __future__ import annotations

# The voting combiners register first, then the stacker: the order fit-stacker and report use.
import ensemble.combine.voting  # noqa: F401  registers hard, soft, weighted, greedy

# isort: split
import ensemble.combine.stacker  # noqa: F401  registers stack
from ensemble.combine.base import Combiner, VotingCombiner, registered_so_far


def registered_combiners() -> dict[str, type[Combiner]]:
    """Every combiner by name, in the order fit-stacker fits and report lists them.

    The voting combiners first, in the order :mod:`ensemble.combine.voting` declares them, then
    the feature-based ones — whichever module happened to be imported first.

    Example:
        >>> list(registered_combiners())
        ['hard', 'soft', 'weighted', 'greedy', 'stack']
    """
    every = registered_so_far()
    voting = {name: cls for name, cls in every.items() if issubclass(cls, VotingCombiner)}
    return voting | {name: cls for name, cls in every.items() if name not in voting}
