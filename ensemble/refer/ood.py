"""Out-of-distribution scores: how unlike the clean cells the ensemble knows is an image.

An :class:`OodDetector` scores each image (larger = more unusual), combining the ensemble's
members, and flags it when its score is above a threshold calibrated on clean validation images,
so that about ``target_referral`` (default 2 %) of clean images are referred to a human.

Methods (each per member):

* ``"mahalanobis"`` (Lee et al. 2018) on pooled features: squared Mahalanobis distance to the
  nearest class mean, with one covariance shared by all classes. Features are first projected
  on their top ``n_components`` principal directions (default 64): a shrinkage covariance
  (Ledoit–Wolf) of 1280-dimensional features would need far more images than a split has, and
  its precision matrix would take 1280² floats (~20 MB of JSON) per member, against 64 × 1280
  for the projection. The fitted state is one *whitening* matrix ``W = L^T C`` (``C`` the
  principal directions, ``L L^T`` the precision) and the class means in whitened coordinates,
  so a distance is a plain Euclidean one: ``min_k ||W (x - mean) - centre_k||²``. Directions of
  small variance are dropped with the projection; an image that differs only there is missed.
* ``"knn"`` (Sun et al. 2022) on pooled features: distance to the ``k``-th nearest of (at most)
  ``bank_size`` fit images, after L2-normalising the features and projecting them on their top
  ``n_components`` principal directions. No Gaussian assumption; the bank is a seeded sample.
* ``"energy"`` (Liu et al. 2020) on **logits**: ``-T * logsumexp(logits / T)``. Not usable on
  probabilities: ``log p`` equals the logits minus a *per-image* constant, ``logsumexp`` of the
  logits, which is exactly what the energy measures, so the energy of ``log p`` is 0 for every
  image at ``T = 1``. Probability-like input is refused; this project's members end in a softmax,
  so energy needs their pre-softmax outputs (the last Dense layer without its activation).
* ``"max_softmax"`` (Hendrycks & Gimpel 2017) on probabilities: ``1 - max_k p[k]``. The baseline
  that works on what the members output today; weak on far-away inputs that a network maps
  confidently to some class.

Ensembles: inputs are a mapping ``{member name: (N, D) array}`` (a single array is one member
named ``"features"``). Each member's score is standardised with the median and MAD of its scores
on the fit images (robust: a few odd fit images do not set the scale), and the image's score is
the mean over members. Standardising keeps a member whose distances are simply larger from
outvoting the others; averaging rewards images that several members find odd.

Calibration: :meth:`OodDetector.calibrate` keeps the clean images' scores, sorted; the threshold
for a rate ``r`` is their ``ceil((n + 1)(1 - r))``-th smallest, so a fresh clean image is flagged
with probability at most ``r`` (and at least ``r - 1/(n + 1)``) when it is exchangeable with the
calibration images. The rate can be changed at predict time. Fit on images the members did not
train on (their training features are tighter than any new image's) and calibrate on *other*
clean images than the fit ones (fit images score low, in-sample).

Saved as JSON with the SHA-256 of the members it was fitted for; the large arrays are stored as
float32 (the features are float32 network outputs: float64 would only add noise), and the
fitted object holds the same float32 values, so a loaded detector scores bit-identically.
About 0.9 MB per member for 1280-dimensional features and 64 components.

Example:
    >>> detector = OodDetector("mahalanobis").fit(val_features, val_labels)
    >>> detector.calibrate(detector.score(blend_features))        # clean images
    >>> flagged = detector.is_out_of_distribution(detector.score(new_features))
    >>> detector.save("runs/NAME/ood.json", member_hashes)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ensemble.core.errors import ConfigError, RunError
from ensemble.core.fileio import atomic_write_text
from ensemble.core.version import FORMAT_VERSION
from ensemble.refer.conformal import (
    NotFittedError,
    check_member_hashes,
    check_probabilities,
    check_rate,
    conformal_quantile,
    is_real_number,
    minimum_calibration_size,
    read_fitted_json,
)

METHODS = ("mahalanobis", "knn", "energy", "max_softmax")
#: The methods fit-stacker offers: ``energy`` needs logits, and the members end in a softmax.
OOD_METHODS = ("mahalanobis", "knn", "max_softmax")
DEFAULT_OOD_METHOD = "mahalanobis"
DEFAULT_TARGET_REFERRAL = 0.02
FORMAT = "blood-ensemble/ood-detector"
SINGLE_MEMBER = "features"  # the member name given to a single array
#: A JSON list of numbers only (no nested list, object or string): written on one line.
_NUMBER_LIST = re.compile(r"\[(\s*-?[0-9][^\[\]{}\"]*?)\]")
_CHUNK = 2048  # rows per block of pairwise distances (kNN): bounds memory to ~chunk × bank


class NotCalibratedError(NotFittedError):
    """:meth:`OodDetector.threshold` (or what needs it) before :meth:`OodDetector.calibrate`."""

    def __init__(self, what: str) -> None:
        # Its own message: NotFittedError's would say to call fit(), which was called.
        RuntimeError.__init__(
            self,
            f"{what} is not calibrated yet: call calibrate() with the scores of clean images "
            "first (or load a calibrated one).",
        )


class OodDetector:
    """Out-of-distribution score per image, combined over members, with a calibrated threshold.

    Args:
        method: ``"mahalanobis"`` or ``"knn"`` (pooled features), ``"energy"`` (logits) or
            ``"max_softmax"`` (probabilities); see the module docstring.
        target_referral: default fraction of clean images to flag, in ``(0, 1)``.
        n_components: principal directions kept before Mahalanobis or kNN (``None``: all,
            for small features only; the fitted state grows with its square).
        k: kNN: which neighbour's distance is the score.
        bank_size: kNN: at most this many fit images are kept as neighbours (seeded sample).
        temperature: energy: ``T`` in ``-T * logsumexp(logits / T)``.
        seed: seeds the kNN bank sample.

    Attributes (after :meth:`fit`):
        members_: member names, in the order given.
        member_states_: per member, the fitted arrays and the standardisation (``median``,
            ``scale``).
        calibration_scores_: (after :meth:`calibrate`) the clean images' scores, ascending.

    Example:
        >>> detector = OodDetector("knn", k=10).fit({"mobilenetv2": f_val})
        >>> detector.calibrate(detector.score({"mobilenetv2": f_blend}))
        >>> detector.is_out_of_distribution(detector.score({"mobilenetv2": f_new}))
    """

    def __init__(
        self,
        method: str = "mahalanobis",
        target_referral: float = DEFAULT_TARGET_REFERRAL,
        n_components: int | None = 64,
        k: int = 10,
        bank_size: int = 2000,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.method = method
        self.target_referral = target_referral
        self.n_components = n_components
        self.k = k
        self.bank_size = bank_size
        self.temperature = temperature
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (what :meth:`save` writes and :meth:`load` rebuilds from)."""
        return {
            "method": self.method,
            "target_referral": self.target_referral,
            "n_components": self.n_components,
            "k": self.k,
            "bank_size": self.bank_size,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def fit(
        self, inputs: Mapping[str, ArrayLike] | ArrayLike, labels: ArrayLike | None = None
    ) -> OodDetector:
        """Fit each member's score on clean in-distribution images, and its standardisation.

        Args:
            inputs: ``{member: (N, D)}`` pooled features (``mahalanobis``, ``knn``), logits
                (``energy``) or probabilities (``max_softmax``); or one ``(N, D)`` array.
            labels: ``(N,)`` class indices; required by ``mahalanobis`` (class means), else
                ignored.

        Returns:
            ``self``, fitted (not yet calibrated).

        Raises:
            ConfigError: an invalid constructor argument, missing or mismatched labels,
                inputs of the wrong shape or kind (e.g. probabilities for ``energy``).
        """
        self._check_params()
        members = self._as_members(inputs, fitted=False)
        n_images = len(next(iter(members.values())))
        if self.method == "mahalanobis":
            if labels is None:
                raise ConfigError(
                    "method='mahalanobis' needs the class labels of the fit images. "
                    "Received: labels=None"
                )
            labels = np.asarray(labels)
            if labels.shape != (n_images,) or not np.issubdtype(labels.dtype, np.integer):
                raise ConfigError(
                    f"labels must be a 1-D integer array with one class per image ({n_images}). "
                    f"Received: labels shape={labels.shape}, dtype={labels.dtype}"
                )
        states = {}
        for name, values in members.items():
            state = self._fit_member(values, labels)
            raw = self._fit_scores(state, values)
            median = float(np.median(raw))
            # 1.4826 * MAD estimates a normal standard deviation; fall back when it is 0
            # (e.g. max_softmax on images the member is certain about).
            scale = 1.4826 * float(np.median(np.abs(raw - median)))
            if not scale > 0:
                scale = float(np.std(raw)) or 1.0
            states[name] = {**state, "median": median, "scale": scale}
        self.members_ = list(members)
        self.member_states_ = states
        self.__dict__.pop("calibration_scores_", None)  # refitting invalidates the calibration
        return self

    def member_scores(self, inputs: Mapping[str, ArrayLike] | ArrayLike) -> dict[str, np.ndarray]:
        """Each member's raw score ``(N,)`` (before standardisation), by member name.

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: other members than at fit time, or inputs of the wrong shape or kind.
        """
        self._check_fitted()
        members = self._as_members(inputs, fitted=True)
        return {
            name: self._member_raw(self.member_states_[name], values)
            for name, values in members.items()
        }

    def score(self, inputs: Mapping[str, ArrayLike] | ArrayLike) -> np.ndarray:
        """Combined score ``(N,)``: the mean over members of their standardised scores.

        Larger means more unlike the fit images. Same inputs as :meth:`fit`.

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: other members than at fit time, or inputs of the wrong shape or kind.
        """
        raw = self.member_scores(inputs)
        standardised = [
            (raw[name] - self.member_states_[name]["median"]) / self.member_states_[name]["scale"]
            for name in self.members_
        ]
        return np.mean(standardised, axis=0)

    def calibrate(self, scores: ArrayLike) -> OodDetector:
        """Keep the scores of clean images (not the fit ones) to set thresholds from.

        Args:
            scores: ``(n,)`` :meth:`score` of clean in-distribution images, at least
                ``1/target_referral - 1`` of them (49 for 2 %).

        Returns:
            ``self``, calibrated.

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: scores that are not a finite 1-D array, or too few for
                ``target_referral``.
        """
        self._check_fitted()
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or not np.all(np.isfinite(scores)):
            raise ConfigError(
                "scores must be a 1-D array of finite numbers (OodDetector.score of clean "
                f"images). Received: shape={scores.shape}"
            )
        needed = minimum_calibration_size(self.target_referral)
        if len(scores) < needed:
            raise ConfigError(
                f"calibration needs at least {needed} clean images for "
                f"target_referral={self.target_referral}. Received: {len(scores)} scores"
            )
        self.calibration_scores_ = np.sort(scores, kind="stable")
        return self

    def threshold(self, target_referral: float | None = None) -> float:
        """Score above which an image is flagged: about ``target_referral`` of clean ones are.

        Raises:
            NotCalibratedError: before :meth:`calibrate`.
            ConfigError: ``target_referral`` outside ``(0, 1)``, or too small for the number of
                calibration images.
        """
        if not hasattr(self, "calibration_scores_"):
            raise NotCalibratedError(type(self).__name__)
        rate = check_rate(
            self.target_referral if target_referral is None else target_referral,
            "target_referral",
        )
        threshold = conformal_quantile(self.calibration_scores_, rate)
        if math.isinf(threshold):
            raise ConfigError(
                f"target_referral={rate} needs at least {minimum_calibration_size(rate)} "
                f"calibration images; the detector has {len(self.calibration_scores_)}. "
                f"Received: target_referral={rate}"
            )
        return threshold

    def is_out_of_distribution(
        self, scores: ArrayLike, target_referral: float | None = None
    ) -> np.ndarray:
        """``(N,)`` True where a score (from :meth:`score`) is above :meth:`threshold`.

        Raises:
            NotCalibratedError: before :meth:`calibrate`.
            ConfigError: a bad ``target_referral``.
        """
        return np.asarray(scores, dtype=np.float64) > self.threshold(target_referral)

    def save(self, path: Path | str, member_hashes: dict[str, str]) -> None:
        """Write the fitted and calibrated state as JSON (atomically), with the member hashes.

        Args:
            path: the ``.json`` file to write.
            member_hashes: SHA-256 of every member model file, by name; :meth:`load` refuses
                the file unless it is given the same.

        Raises:
            NotFittedError: before :meth:`fit`; NotCalibratedError: before :meth:`calibrate`.

        The format (``format_version`` 1)::

            {"format": "blood-ensemble/ood-detector", "format_version": 1,
             "params": {constructor arguments}, "member_sha256": {name: sha256},
             "members": {name: {"median": float, "scale": float, "n_features": D,
                                mahalanobis: "mean" [D], "whitening" [m][D], "centres" [K][m]
                                knn: "mean" [D], "components" [m][D], "bank" [B][m]}},
             "calibration_scores": [ascending floats]}
        """
        self.threshold()  # refuses an uncalibrated detector
        members = {
            name: {key: _to_json(value) for key, value in state.items()}
            for name, state in self.member_states_.items()
        }
        atomic_write_text(
            path,
            _json_text(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "params": self.get_params(),
                    "member_sha256": dict(member_hashes),
                    "members": members,
                    "member_order": self.members_,
                    "calibration_scores": [float(s) for s in self.calibration_scores_],
                }
            ),
        )

    @classmethod
    def load(cls, path: Path | str, expected_hashes: dict[str, str]) -> OodDetector:
        """Read a detector written by :meth:`save`, refusing one fitted for other members.

        Args:
            path: the JSON file.
            expected_hashes: SHA-256 of the current member model files, by name.

        Raises:
            RunError: no such file, not an OOD detector file, or fitted for other members
                (the message names the file and says to re-run the calibration).
        """
        payload = read_fitted_json(path, FORMAT, "OOD detector")
        check_member_hashes(path, payload["member_sha256"], expected_hashes, "OOD detector")
        try:
            detector = cls(**payload["params"])
            detector._check_params()
            states = {}
            for name in payload["member_order"]:
                states[name] = {
                    key: _from_json(value) for key, value in payload["members"][name].items()
                }
            scores = np.asarray(payload["calibration_scores"], dtype=np.float64)
        except (KeyError, TypeError, ValueError, ConfigError) as error:
            raise RunError(
                f"{path} is not a valid OOD detector ({error}). Re-run the calibration."
            ) from None
        detector.members_ = list(payload["member_order"])
        detector.member_states_ = states
        detector.calibration_scores_ = scores
        return detector

    # --- per-member fitting and scoring -----------------------------------------------------

    def _fit_member(self, values: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        state: dict[str, Any] = {"n_features": int(values.shape[1])}
        if self.method == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            mean = values.mean(axis=0)
            components = _principal_directions(values - mean, self.n_components)
            projected = (values - mean) @ components.T
            classes, index = np.unique(labels, return_inverse=True)
            centres = np.stack([projected[index == i].mean(axis=0) for i in range(len(classes))])
            # Tied covariance: of the residuals around each image's own class mean.
            residuals = projected - centres[index]
            precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
            cholesky = np.linalg.cholesky(precision)  # precision = L L^T
            # ||L^T (z - mu)||^2 = (z - mu)^T P (z - mu): whiten once, then Euclidean distances.
            state["mean"] = mean.astype(np.float32)
            state["whitening"] = (cholesky.T @ components).astype(np.float32)
            state["centres"] = (centres @ cholesky).astype(np.float32)
        elif self.method == "knn":
            normalised = _l2_normalise(values)
            mean = normalised.mean(axis=0)
            components = _principal_directions(normalised - mean, self.n_components)
            chosen = np.random.default_rng(self.seed).permutation(len(values))[: self.bank_size]
            state["mean"] = mean.astype(np.float32)
            state["components"] = components.astype(np.float32)
            state["bank"] = ((normalised[np.sort(chosen)] - mean) @ components.T).astype(np.float32)
        return state

    def _fit_scores(self, state: dict[str, Any], values: np.ndarray) -> np.ndarray:
        """Scores of the fit images, to standardise with."""
        if self.method != "knn":
            return self._member_raw(state, values)
        # Only the bank images, leave-one-out: each finds itself at distance 0, so its k-th
        # neighbour among the others is its (k+1)-th in the bank.
        bank = _f64(state["bank"])
        rank = min(self.k, len(bank) - 1)
        return np.concatenate([_kth_distance(block, bank, rank) for block in _blocks(bank)])

    def _member_raw(self, state: dict[str, Any], values: np.ndarray) -> np.ndarray:
        if self.method == "mahalanobis":
            whitened = (values - _f64(state["mean"])) @ _f64(state["whitening"]).T
            centres = _f64(state["centres"])
            squared = (
                (whitened**2).sum(axis=1)[:, None]
                - 2.0 * whitened @ centres.T
                + (centres**2).sum(axis=1)[None, :]
            )
            return np.maximum(squared.min(axis=1), 0.0)  # rounding can dip a hair below 0
        if self.method == "knn":
            projected = (_l2_normalise(values) - _f64(state["mean"])) @ _f64(state["components"]).T
            bank = _f64(state["bank"])
            rank = min(self.k, len(bank)) - 1
            return (
                np.concatenate([_kth_distance(block, bank, rank) for block in _blocks(projected)])
                if len(projected)
                else np.zeros(0)
            )
        if self.method == "energy":
            scaled = values / self.temperature
            top = scaled.max(axis=1)
            log_sum = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
            return -self.temperature * log_sum
        return 1.0 - values.max(axis=1)  # max_softmax

    # --- checks -------------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown OOD method. Choose from {list(METHODS)}. Received: method={self.method!r}"
            )
        check_rate(self.target_referral, "target_referral")
        if self.n_components is not None and (
            not _is_int(self.n_components) or self.n_components < 1
        ):
            raise ConfigError(
                "n_components must be an integer >= 1, or None to keep every direction. "
                f"Received: n_components={self.n_components!r}"
            )
        if not _is_int(self.k) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1. Received: k={self.k!r}")
        if not _is_int(self.bank_size) or self.bank_size < self.k + 1:
            raise ConfigError(
                f"bank_size must be an integer >= k + 1 ({self.k + 1}). "
                f"Received: bank_size={self.bank_size!r}"
            )
        if not is_real_number(self.temperature) or not self.temperature > 0:
            raise ConfigError(
                f"temperature must be a number > 0. Received: temperature={self.temperature!r}"
            )
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer. Received: seed={self.seed!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "member_states_"):
            raise NotFittedError(type(self).__name__)

    def _as_members(
        self, inputs: Mapping[str, ArrayLike] | ArrayLike, fitted: bool
    ) -> dict[str, np.ndarray]:
        members = dict(inputs) if isinstance(inputs, Mapping) else {SINGLE_MEMBER: inputs}
        if not members:
            raise ConfigError("inputs must hold at least one member. Received: {}")
        if fitted and sorted(members) != sorted(self.members_):
            raise ConfigError(
                f"inputs must have the members the detector was fitted on: {self.members_}. "
                f"Received: members={list(members)}"
            )
        checked = {}
        for name, values in members.items():
            values = self._check_member_input(name, values)
            if fitted and values.shape[1] != self.member_states_[name]["n_features"]:
                raise ConfigError(
                    f"inputs of member {name!r} must have "
                    f"{self.member_states_[name]['n_features']} columns, as at fit time. "
                    f"Received: n_features={values.shape[1]}"
                )
            checked[name] = values
        lengths = {name: len(values) for name, values in checked.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"every member's inputs must have one row per image. Received: rows={lengths}"
            )
        if not fitted and min(lengths.values()) < 2:
            raise ConfigError(
                f"fit needs at least 2 images. Received: rows={min(lengths.values())}"
            )
        return checked

    def _check_member_input(self, name: str, values: ArrayLike) -> np.ndarray:
        if self.method == "max_softmax":
            return check_probabilities(values)
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(
                f"inputs of member {name!r} must be a numeric (n_images, n_features) array. "
                f"Received: type={type(values).__name__}"
            ) from None
        if values.ndim != 2 or not np.all(np.isfinite(values)):
            raise ConfigError(
                f"inputs of member {name!r} must be a finite (n_images, n_features) array. "
                f"Received: shape={values.shape}"
            )
        if (
            self.method == "energy"
            and len(values)
            and np.all(values >= 0)
            and np.allclose(values.sum(axis=1), 1.0, atol=1e-3)
        ):
            raise ConfigError(
                f"method='energy' needs logits, but the inputs of member {name!r} are "
                "probabilities (rows sum to 1): their energy is the same for every image. Pass "
                "the pre-softmax outputs, or use method='max_softmax'. Received: probabilities"
            )
        return values


def _principal_directions(centred: np.ndarray, n_components: int | None) -> np.ndarray:
    """Top principal directions ``(m, D)`` of a centred matrix (identity when all are kept).

    An eigendecomposition of the smaller of ``X^T X`` and ``X X^T`` rather than an SVD of ``X``:
    about ten times faster for a split's 1,000-2,000 images of 1280 features.
    """
    n_images, n_features = centred.shape
    if n_components is None or n_components >= n_features:
        return np.eye(n_features)
    m = min(n_components, n_images - 1)
    if n_images >= n_features:
        _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        return vectors[:, ::-1][:, :m].T
    values, vectors = np.linalg.eigh(centred @ centred.T)
    top_values, top_vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    # Right singular vectors from left ones: v = X^T u / sigma.
    return ((centred.T @ top_vectors) / np.sqrt(np.maximum(top_values, 1e-300))).T


def _l2_normalise(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)  # an all-zero feature vector stays zero


def _blocks(values: np.ndarray) -> list[np.ndarray]:
    return [values[start : start + _CHUNK] for start in range(0, len(values), _CHUNK)]


def _kth_distance(queries: np.ndarray, bank: np.ndarray, rank: int) -> np.ndarray:
    """Euclidean distance from each query to its ``rank``-th (0-based) nearest bank row."""
    squared = (
        (queries**2).sum(axis=1)[:, None] - 2.0 * queries @ bank.T + (bank**2).sum(axis=1)[None, :]
    )
    kth = np.partition(squared, rank, axis=1)[:, rank]
    return np.sqrt(np.maximum(kth, 0.0))


def _f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _json_text(payload: dict[str, Any]) -> str:
    """Indented, key-sorted JSON like ``atomic_write_json``, but each vector on one line.

    Plain ``indent=1`` puts each of the ~80,000 numbers of a member on a line of its own,
    which makes the file 60 % larger and no easier to read.
    """
    text = json.dumps(payload, indent=1, sort_keys=True)
    return (
        _NUMBER_LIST.sub(lambda match: "[" + re.sub(r"\s+", "", match.group(1)) + "]", text) + "\n"
    )


def _to_json(value: Any) -> Any:
    """float32 arrays as nested lists of their shortest decimal form (exact on reading back)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 1:
            return [float(str(v)) for v in value]
        return [_to_json(row) for row in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float32)
    return value
