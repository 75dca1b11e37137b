"""The combiner interface: how the members' outputs on the same images become one prediction.

Every combiner follows scikit-learn's conventions: ``__init__`` only stores its arguments,
``fit`` learns (on the ``blend`` split), learned state ends in ``_``, ``predict_proba`` /
``predict`` refuse to run before ``fit`` (:class:`~ensemble.core.errors.NotFittedError`). Learned
state round-trips through readable JSON (:meth:`VotingCombiner.to_json` /
:func:`combiner_from_json`), XGBoost's own format and ``.npy`` — no pickle.

**The registry.** Every combiner class is registered by name with :func:`register`;
:func:`registered_combiners` is the one map from name to class that fit-stacker, predict and
report use. A combiner takes part in all three through the :class:`Combiner` interface:
:meth:`Combiner.fit_blend` on the ``blend`` split's :class:`Blend`, :meth:`Combiner.combine` on
any images' :class:`MemberOutputs`, :meth:`Combiner.save` / :meth:`Combiner.load`. Adding a
voting combiner is one decorated class in :mod:`ensemble.combine.voting`::

    @register
    class MedianVote(VotingCombiner):
        name = "median"

        def predict_proba(self, stack):
            return np.median(self._check_fitted(stack), axis=0)

Voting combiners work on a stack of temperature-scaled member probabilities ``P`` of shape
``(n_members, n_images, n_classes)``:

* :class:`HardVote` — majority of the members' argmax votes; ties broken by the mean probability
  of the tied classes.
* :class:`SoftVote` — mean probability.
* :class:`WeightedSoftVote` — weighted mean, weights (on the simplex) minimising the blend log
  loss.
* :class:`GreedySelection` — Caruana et al. (2004) ensemble selection with replacement, as in
  AutoGluon's weighted ensemble: repeatedly add the member that most lowers the blend log loss.

A feature-based combiner (the XGBoost stacker, :mod:`ensemble.combine.stacker`) reads the members'
pooled features and raw probabilities from the same :class:`MemberOutputs`.
:class:`TemperatureScaling` — one temperature per member fitted on ``val`` — is applied before
any combiner, because averaging assumes calibrated probabilities.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ensemble.core.errors import ConfigError, NotFittedError
from ensemble.core.fileio import atomic_write_text

EPSILON = 1e-12


@dataclass(frozen=True)
class MemberOutputs:
    """Every member's outputs on the same images: what each combiner reads.

    Attributes:
        probabilities: ``(n_members, N, K)`` each member's own probabilities.
        calibrated: ``(n_members, N, K)`` the same after temperature scaling.
        features: one ``(N, F)`` pooled-feature array per member, in member order.
    """

    probabilities: np.ndarray
    calibrated: np.ndarray
    features: tuple[np.ndarray, ...]

    @property
    def votes(self) -> np.ndarray:
        """Each member's predicted class ``(n_members, N)`` (argmax of its calibrated output)."""
        return self.calibrated.argmax(axis=2)

    def rows(self, rows: np.ndarray) -> MemberOutputs:
        """The same outputs on a subset of the images (a boolean mask or indices)."""
        return MemberOutputs(
            probabilities=self.probabilities[:, rows],
            calibrated=self.calibrated[:, rows],
            features=tuple(features[rows] for features in self.features),
        )


@dataclass(frozen=True)
class Blend:
    """The ``blend`` split as the combiners are fitted on it.

    Attributes:
        outputs: the members' outputs on the blend images.
        labels: true class index of each blend image.
        ids: image id of each blend image (the stacker's leakage guard checks them).
        split_of: the run's split, image id → split name.
        folds: cross-validation folds inside ``blend`` (``(fit_rows, held_rows)`` pairs), the
            same for every combiner so their scores compare.
    """

    outputs: MemberOutputs
    labels: np.ndarray
    ids: list[str]
    split_of: Mapping[str, str]
    folds: list[tuple[np.ndarray, np.ndarray]]


class Combiner(ABC):
    """What fit-stacker, predict and report need from every combiner."""

    name: ClassVar[str]  # registry key, the name users pass to --combiner

    @classmethod
    def create(cls, members: list[str], seed: int) -> Combiner:
        """An unfitted combiner for a run's ``members``, seeded where it draws random numbers."""
        return cls()

    @abstractmethod
    def fit_blend(self, blend: Blend) -> Combiner:
        """Fit on the ``blend`` split; returns ``self``."""

    @abstractmethod
    def combine(self, outputs: MemberOutputs) -> np.ndarray:
        """Class probabilities ``(N, K)`` from the members' outputs on N images."""

    @abstractmethod
    def cross_validated_accuracy(self, blend: Blend) -> float:
        """Accuracy on ``blend`` of copies fitted on the other folds (how the default is chosen)."""

    @classmethod
    @abstractmethod
    def files(cls) -> tuple[str, ...]:
        """Names of the files :meth:`save` writes (their hashes are recorded and checked)."""

    @abstractmethod
    def save(self, folder: Path, *, member_hashes: dict[str, str], classes: list[str]) -> None:
        """Write the fitted state into ``folder`` (atomically, no pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, *, member_hashes: dict[str, str]) -> Combiner:
        """Read a combiner saved by :meth:`save`.

        Raises:
            RunError: it was fitted on other members than ``member_hashes`` describe.
        """


_REGISTRY: dict[str, type[Combiner]] = {}


def register(cls: type[Combiner]) -> type[Combiner]:
    """Class decorator: add a combiner to the registry under its ``name`` (unique).

    Raises:
        ValueError: another combiner already has that name.
    """
    if cls.name in _REGISTRY:
        raise ValueError(f"combiner {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered_so_far() -> dict[str, type[Combiner]]:
    """The combiners registered by the modules imported so far, by name.

    :func:`ensemble.combine.registry.registered_combiners` imports every combiner module first;
    use that one.
    """
    return dict(_REGISTRY)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def check_stack(stack: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """``stack`` as float64 ``(n_members, n_images, n_classes)``, with labels that fit it.

    Raises:
        ConfigError: another shape, or labels of another length.
    """
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ConfigError(
            "member probabilities must have shape (n_members, n_images, n_classes). "
            f"Received: shape={stack.shape}"
        )
    if labels is not None and len(labels) != stack.shape[1]:
        raise ConfigError(f"{stack.shape[1]} images but {len(labels)} labels")
    return stack


class VotingCombiner(Combiner):
    """A combiner of the temperature-scaled member probabilities alone (no features).

    Subclasses implement :meth:`predict_proba` on a stack ``(n_members, N, K)``; those that
    learn override :meth:`fit`, :meth:`state` and :meth:`_restore`.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ()  # constructor arguments, saved with the state

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> VotingCombiner:
        """Learn from the members' probabilities on the ``blend`` split."""
        check_stack(stack, labels)
        self.n_members_ = stack.shape[0]
        return self

    @abstractmethod
    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` from the stack ``(n_members, N, K)``."""

    def predict(self, stack: np.ndarray) -> np.ndarray:
        """Predicted class index per image."""
        return self.predict_proba(stack).argmax(axis=1)

    def _check_fitted(self, stack: np.ndarray) -> np.ndarray:
        if not hasattr(self, "n_members_"):
            raise NotFittedError(type(self).__name__)
        stack = check_stack(stack)
        if stack.shape[0] != self.n_members_:
            raise ConfigError(
                f"{type(self).__name__} was fitted on {self.n_members_} members. "
                f"Received: {stack.shape[0]}"
            )
        return stack

    def state(self) -> dict[str, Any]:
        """The constructor arguments and learned state as JSON-ready values."""
        return {"n_members": self.n_members_, **{key: getattr(self, key) for key in self._PARAMS}}

    def _restore(self, state: dict[str, Any]) -> None:
        """Set the learned state from :meth:`state`'s output."""
        self.n_members_ = int(state["n_members"])

    def to_json(self) -> str:
        """Readable JSON of the combiner's kind and learned state."""
        return json.dumps({"kind": self.name, **self.state()}, indent=1, sort_keys=True)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VotingCombiner:
        """A fitted combiner from :meth:`state`'s output."""
        combiner = cls(**{key: state[key] for key in cls._PARAMS})
        combiner._restore(state)
        return combiner

    # The Combiner interface: voting reads the calibrated probabilities only.

    def fit_blend(self, blend: Blend) -> VotingCombiner:
        """Fit on the blend split's calibrated probabilities."""
        return self.fit(blend.outputs.calibrated, blend.labels)

    def combine(self, outputs: MemberOutputs) -> np.ndarray:
        """Class probabilities from the calibrated member probabilities."""
        return self.predict_proba(outputs.calibrated)

    def cross_validated_accuracy(self, blend: Blend) -> float:
        """Refit a copy on each fold's other rows and count its right answers on the fold."""
        stack, labels = blend.outputs.calibrated, blend.labels
        correct = 0
        for fit_rows, held_rows in blend.folds:
            fold_model = deepcopy(self).fit(stack[:, fit_rows], labels[fit_rows])
            correct += int((fold_model.predict(stack[:, held_rows]) == labels[held_rows]).sum())
        return round(correct / len(labels), 6)

    @classmethod
    def files(cls) -> tuple[str, ...]:
        """One JSON file named after the combiner."""
        return (f"{cls.name}.json",)

    def save(self, folder: Path, *, member_hashes: dict[str, str], classes: list[str]) -> None:
        """Write ``<name>.json`` (the member hashes are checked by the selection instead)."""
        atomic_write_text(Path(folder) / f"{self.name}.json", self.to_json() + "\n")

    @classmethod
    def load(cls, folder: Path, *, member_hashes: dict[str, str]) -> VotingCombiner:
        """Read ``<name>.json``."""
        payload = json.loads((Path(folder) / f"{cls.name}.json").read_text())
        if payload.get("kind") != cls.name:
            raise ConfigError(f"{folder}/{cls.name}.json holds a {payload.get('kind')!r} combiner")
        return cls.from_state(payload)


#: Cross-validation folds inside ``blend`` (fewer where a class has fewer images).
FOLDS = 3


def blend_folds(labels: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds inside ``blend``: stratified 3-fold where every class allows it.

    A tiny ``blend`` (fewer than 3 images of some class) gets as many stratified folds as its
    rarest class allows, and plain 2-fold splits when a class has a single image.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    present = np.bincount(labels)
    rarest = int(present[present > 0].min()) if len(labels) else 0
    if rarest >= 2:
        folds = StratifiedKFold(min(FOLDS, rarest), shuffle=True, random_state=seed)
        return list(folds.split(labels, labels))
    return list(KFold(2, shuffle=True, random_state=seed).split(labels))


def grouped_folds(
    labels: np.ndarray, groups: list[str] | np.ndarray, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`blend_folds` over groups of rows: the rows of one group always on one side.

    A group is one source image and its shifted copies (the same id), so no copy of an image is
    ever used to predict that image. With one row per group these are exactly
    :func:`blend_folds` of ``labels``.

    Args:
        labels: class index of each row; every row of a group has its group's label.
        groups: the group (image id) of each row.
        seed: seeds the folds.

    Returns:
        ``(fit_rows, held_rows)`` pairs; the held rows of all folds partition the rows.
    """
    groups = np.asarray([str(group) for group in groups])
    _, first_rows, row_group = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first_rows)  # groups in the order they first appear
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group_of_row = rank[row_group.reshape(-1)]
    group_labels = np.asarray(labels)[np.sort(first_rows)]
    folds = []
    for _, held_groups in blend_folds(group_labels, seed):
        held = np.isin(group_of_row, held_groups)
        folds.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return folds
