"""One member's directory: every file name in it, in one place.

A member directory holds::

    spec.json            the resolved spec (a restarted run refuses a different one)
    checkpoint/last.keras, checkpoint/state.json   the last completed epoch (model + optimizer)
    best.keras           the best model so far by validation accuracy
    model.keras          the finished member
    thresholds.json      one-vs-rest members: each head's decision threshold
    history.json         per-epoch loss, accuracy, validation accuracy and macro-F1, timings
    metrics.json         written last: the member is finished only once it exists
    tensorboard/         TensorBoard logs

Every file is written to a temporary name and renamed (:mod:`ensemble.core.fileio`), so a
process killed at any moment leaves only complete files. Code that reads or writes one of these
files asks :class:`MemberDir` for its path; the run directory around it is
:class:`ensemble.run.directory.RunDir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemberDir:
    """The directory of one member, and the path of every file in it.

    Example:
        >>> MemberDir(Path("runs/pbc-cpu/members/mobilenetv2-64")).model.name
        'model.keras'
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def spec(self) -> Path:
        """``spec.json``: the resolved spec the member is trained from."""
        return self.path / "spec.json"

    @property
    def checkpoint(self) -> Path:
        """``checkpoint/last.keras``: the last completed epoch, optimizer included."""
        return self.path / "checkpoint" / "last.keras"

    @property
    def state(self) -> Path:
        """``checkpoint/state.json``: the training state of :attr:`checkpoint`."""
        return self.path / "checkpoint" / "state.json"

    @property
    def best(self) -> Path:
        """``best.keras``: the best epoch so far by validation accuracy."""
        return self.path / "best.keras"

    @property
    def model(self) -> Path:
        """``model.keras``: the finished member."""
        return self.path / "model.keras"

    @property
    def thresholds(self) -> Path:
        """``thresholds.json``: a one-vs-rest member's decision thresholds."""
        return self.path / "thresholds.json"

    @property
    def history(self) -> Path:
        """``history.json``: one record per epoch."""
        return self.path / "history.json"

    @property
    def metrics(self) -> Path:
        """``metrics.json``: what training measured; written last, it marks the member done."""
        return self.path / "metrics.json"

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``: TensorBoard logs."""
        return self.path / "tensorboard"

    def is_finished(self) -> bool:
        """True once the member completed training (its metrics and model both exist)."""
        return self.metrics.is_file() and self.model.is_file()
