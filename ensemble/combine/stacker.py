"""The stacker: an XGBoost multi-class model on the members' concatenated pooled features.

It is fitted only on the ``blend`` split: no image that trained a member (``train``) or
early-stopped it (``val``) may train the stacker, otherwise the features it learns from would be
over-confident copies of what the members memorised, and its test score would be optimistic.
:meth:`Stacker.fit` checks this against the run's split and refuses otherwise.

Dimensionality (PCA components on the standardised features) and regularisation (tree depth,
L2) are chosen by stratified cross-validation inside ``blend``, grouped by image (an image's
shifted copies never on both sides of a fold). The accuracy fit-stacker compares with the other
combiners' is *nested*: on the same folds as theirs, each fold's stacker chooses its own
settings without seeing the fold. Saved as XGBoost's own JSON
model, the PCA as ``.npy`` (loaded without pickle) and a JSON sidecar with the feature layout,
classes and the members' model hashes. Registered as the ``stack`` combiner
(:mod:`ensemble.combine.base`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensemble.combine.base import Blend, Combiner, MemberOutputs, grouped_folds, register
from ensemble.core.errors import ConfigError, NotFittedError, RunError
from ensemble.core.fileio import atomic_write_bytes, atomic_write_json
from ensemble.core.hashes import check_recorded_hashes

#: Candidate settings searched by cross-validation inside ``blend``.
COMPONENTS = (32, 96)  # PCA dimensions of the concatenated features
DEPTHS = (2, 4)  # XGBoost max_depth
L2 = (1.0, 10.0)  # XGBoost reg_lambda

#: Below this many fitting images the settings are not searched but fixed in advance
#: (:data:`SMALL_BLEND_SETTINGS`): a grid of eight cross-validated on a few dozen images
#: chooses noise, and costs most of fit-stacker's time on a small run.
GRID_MIN_IMAGES = 200


class Settings(NamedTuple):
    """One point of the cross-validated grid."""

    components: int  # PCA dimensions (capped by the features and the blend size)
    max_depth: int  # XGBoost tree depth
    l2: float  # XGBoost L2 regularisation (reg_lambda)


#: The settings of a blend too small to search them: few components, shallow trees, strong L2.
SMALL_BLEND_SETTINGS = Settings(32, 2, 10.0)


def tie_break(settings: Settings) -> tuple[float, int, int]:
    """Order among settings with equal cross-validated accuracy: the first wins.

    Weaker L2, then fewer components, then shallower trees — the order earlier versions used,
    kept so that refitting a run chooses the same settings.
    """
    return (settings.l2, settings.components, settings.max_depth)


@register
@dataclass
class Stacker(Combiner):
    """XGBoost on pooled features (optionally plus member probabilities).

    Args:
        members: member names, in the order their features are concatenated.
        with_probabilities: also feed the members' probabilities to the stacker.
        seed: seeds the cross-validation folds and XGBoost.
    """

    name = "stack"

    members: list[str]
    with_probabilities: bool = True
    seed: int = 0

    def fit(
        self,
        features: list[np.ndarray],
        probabilities: list[np.ndarray],
        labels: np.ndarray,
        ids: list[str],
        split_of: dict[str, str],
    ) -> Stacker:
        """Choose settings by cross-validation inside ``blend``, then fit on all of ``blend``.

        The folds are grouped by image id (:func:`grouped_folds`): an image and its shifted
        copies are always on the same side, so a setting is never chosen for predicting an
        image from its own copy.

        Raises:
            RunError: an id is not in the ``blend`` split (it trained or early-stopped a member).
        """
        leaked = [image_id for image_id in ids if split_of.get(image_id) != "blend"]
        if leaked:
            raise RunError(
                f"the stacker may only be fitted on the blend split; {len(leaked)} images are "
                f"from another split (e.g. {leaked[0]} in {split_of.get(leaked[0])!r}). Images "
                "that trained or early-stopped a member would leak into the stacker."
            )
        if len(features) != len(self.members):
            raise ConfigError(f"{len(features)} feature arrays for {len(self.members)} members")
        matrix = self._matrix(features, probabilities)
        self.mean_ = matrix.mean(axis=0)
        self.scale_ = matrix.std(axis=0) + 1e-6
        standard = (matrix - self.mean_) / self.scale_
        self.n_classes_ = int(labels.max()) + 1
        self.cv_scores_: dict[Settings, float | None] = {}
        self.nested_cv_accuracy_: float | None = None
        folds = grouped_folds(labels, ids, self.seed)
        if len(labels) < GRID_MIN_IMAGES:  # fixed in advance: nothing to choose, nothing scored
            components, depth, l2 = SMALL_BLEND_SETTINGS
            best = Settings(min(components, standard.shape[1], len(labels) // 2), depth, l2)
            self.cv_scores_[best] = None
        else:
            for components, depth, l2 in product(COMPONENTS, DEPTHS, L2):
                point = Settings(min(components, standard.shape[1], len(labels) // 2), depth, l2)
                if point not in self.cv_scores_:  # capped components can repeat a point
                    self.cv_scores_[point] = self._cross_validate(standard, labels, folds, *point)
            best = min(
                self.cv_scores_, key=lambda point: (-self.cv_scores_[point], tie_break(point))
            )
        self.settings_ = best._asdict()
        self.components_ = _pca(standard, best.components)
        self.model_ = self._fit_model(
            standard @ self.components_.T, labels, depth=best.max_depth, l2=best.l2
        )
        return self

    def predict_proba(
        self, features: list[np.ndarray], probabilities: list[np.ndarray]
    ) -> np.ndarray:
        """Class probabilities ``(N, K)``."""
        import xgboost

        if not hasattr(self, "model_"):
            raise NotFittedError("Stacker")
        matrix = (self._matrix(features, probabilities) - self.mean_) / self.scale_
        return self.model_.predict(xgboost.DMatrix(matrix @ self.components_.T))

    # The Combiner interface: the stacker reads features and raw member probabilities.

    @classmethod
    def create(cls, members: list[str], seed: int) -> Stacker:
        """An unfitted stacker on ``members``' features and probabilities."""
        return cls(members, with_probabilities=True, seed=seed)

    def fit_blend(self, blend: Blend) -> Stacker:
        """Fit on the blend split (its ids go through the leakage guard)."""
        outputs = blend.outputs
        return self.fit(
            list(outputs.features),
            list(outputs.probabilities),
            blend.labels,
            blend.ids,
            blend.split_of,
        )

    def combine(self, outputs: MemberOutputs) -> np.ndarray:
        """Class probabilities from the members' features and (raw) probabilities."""
        return self.predict_proba(list(outputs.features), list(outputs.probabilities))

    def cross_validated_accuracy(self, blend: Blend) -> float:
        """Nested cross-validated accuracy on ``blend.folds``, the folds every combiner uses.

        For each fold a fresh stacker is fitted on the other rows — choosing its settings by
        its own inner cross-validation there, as :meth:`fit` does — and predicts the fold. The
        best grid point's score of :meth:`fit` would be optimistic (the maximum over eight
        settings, chosen on the very images it scores); this one means what the voting
        combiners' scores mean.
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("Stacker")
        if getattr(self, "nested_cv_accuracy_", None) is None:
            outputs, correct = blend.outputs, 0
            for fit_rows, held_rows in blend.folds:
                fold = Stacker(self.members, self.with_probabilities, self.seed).fit(
                    [features[fit_rows] for features in outputs.features],
                    list(outputs.probabilities[:, fit_rows]),
                    blend.labels[fit_rows],
                    [blend.ids[row] for row in fit_rows],
                    blend.split_of,
                )
                predicted = fold.predict_proba(
                    [features[held_rows] for features in outputs.features],
                    list(outputs.probabilities[:, held_rows]),
                ).argmax(axis=1)
                correct += int((predicted == blend.labels[held_rows]).sum())
            self.nested_cv_accuracy_ = round(correct / len(blend.labels), 6)
        return self.nested_cv_accuracy_

    @classmethod
    def files(cls) -> tuple[str, ...]:
        """The XGBoost model, the standardisation and PCA, and the JSON sidecar."""
        return ("stacker.ubj", "stacker_pca.npy", "stacker.json")

    def save(self, folder: Path, *, member_hashes: dict[str, str], classes: list[str]) -> None:
        """Write ``stacker.ubj`` (XGBoost), ``stacker_pca.npy`` and ``stacker.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "stacker.ubj", bytes(self.model_.save_raw("ubj")))
        buffer = io.BytesIO()
        np.save(buffer, np.stack([self.mean_, self.scale_]).astype(np.float64))
        np.save(buffer, self.components_.astype(np.float64))
        atomic_write_bytes(folder / "stacker_pca.npy", buffer.getvalue())
        atomic_write_json(
            folder / "stacker.json",
            {
                "members": self.members,
                "member_model_sha256": member_hashes,
                "classes": classes,
                "with_probabilities": self.with_probabilities,
                "feature_layout": "standardised [features of each member, then probabilities of "
                "each member], projected on PCA components",
                "settings": self.settings_,
                "cv_grid": [
                    point._asdict() | {"cv_accuracy": score}
                    for point, score in self.cv_scores_.items()
                ],
                "nested_cv_accuracy": getattr(self, "nested_cv_accuracy_", None),
                "seed": self.seed,
            },
        )

    @classmethod
    def load(cls, folder: Path, *, member_hashes: dict[str, str]) -> Stacker:
        """Load a saved stacker; refuse one fitted on other members (hash mismatch).

        Raises:
            RunError: the stacker's recorded member hashes differ from ``member_hashes``.
        """
        import xgboost

        folder = Path(folder)
        sidecar = json.loads((folder / "stacker.json").read_text())
        check_recorded_hashes(
            sidecar["member_model_sha256"],
            member_hashes,
            f"the stacker in {folder} was fitted on other members (changed: {{changed}}). "
            "Run fit-stacker again.",
        )
        stacker = cls(sidecar["members"], sidecar["with_probabilities"], sidecar["seed"])
        with open(folder / "stacker_pca.npy", "rb") as stream:
            stacker.mean_, stacker.scale_ = np.load(stream, allow_pickle=False)
            stacker.components_ = np.load(stream, allow_pickle=False)
        booster = xgboost.Booster()
        booster.load_model(bytearray((folder / "stacker.ubj").read_bytes()))
        stacker.model_ = booster
        stacker.settings_ = sidecar["settings"]
        stacker.nested_cv_accuracy_ = sidecar.get("nested_cv_accuracy")
        stacker.cv_scores_ = {  # absent from files written before the grid was saved as a list
            Settings(row["components"], row["max_depth"], row["l2"]): row["cv_accuracy"]
            for row in sidecar.get("cv_grid", [])
        }
        return stacker

    def _matrix(self, features: list[np.ndarray], probabilities: list[np.ndarray]) -> np.ndarray:
        parts = list(features) + (list(probabilities) if self.with_probabilities else [])
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)

    def _cross_validate(self, standard, labels, folds, components, depth, l2) -> float:
        correct = 0
        for fit_rows, held_rows in folds:
            basis = _pca(standard[fit_rows], components)
            model = self._fit_model(standard[fit_rows] @ basis.T, labels[fit_rows], depth, l2)
            import xgboost

            predicted = model.predict(xgboost.DMatrix(standard[held_rows] @ basis.T)).argmax(1)
            correct += int((predicted == labels[held_rows]).sum())
        return round(correct / len(labels), 6)

    def _fit_model(self, matrix, labels, depth, l2):
        import xgboost

        params = {
            "objective": "multi:softprob",
            "num_class": self.n_classes_,
            "max_depth": depth,
            "eta": 0.1,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "lambda": l2,
            "seed": self.seed,
            "nthread": 2,
        }
        return xgboost.train(params, xgboost.DMatrix(matrix, label=labels), num_boost_round=150)


def _pca(matrix: np.ndarray, components: int) -> np.ndarray:
    """Top principal directions ``(components, F)`` of an already-centred matrix."""
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:components]
