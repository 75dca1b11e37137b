"""A fitted ensemble: a run's members, temperatures and combiners, loaded and verified once.

:meth:`FittedEnsemble.load` is the one loader behind ``predict``, ``report`` and the Python API:
it reads the selection fit-stacker wrote, hashes each member's model once and checks it and
every combiner file against the selection, and loads the temperatures and every registered
combiner through :mod:`ensemble.combiners`' interface (no combiner is special-cased here).
Member models are loaded on first use, in Keras safe mode. Nothing is unpickled.

Example:
    >>> ensemble = FittedEnsemble.load("runs/pbc-cpu")  # doctest: +SKIP
    >>> ensemble.predict(images)  # uint8 (N, H, W, 3), any size  # doctest: +SKIP
    array([6, 0, 3, ...])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ensemble.artifacts import load_keras_model
from ensemble.combiners import (
    Combiner,
    MemberOutputs,
    TemperatureScaling,
    registered_combiners,
)
from ensemble.errors import ConfigError, DataError, RunError
from ensemble.features import average_over_views, feature_model
from ensemble.images import UnreadableImage, crop_and_resize, decode_image, file_sha256
from ensemble.run import RunDir
from ensemble.selection import TEMPERATURES, Selection

#: Images as the ensemble accepts them: uint8 ``(N, H, W, 3)`` at any size, the same images
#: already resized per input size (``{size: (N, size, size, 3)}``), or image file paths.
Images = np.ndarray | Mapping[int, np.ndarray] | Sequence[Path | str]


class FittedEnsemble:
    """A run's trained members and fitted combiners, ready to classify images.

    Build it with :meth:`load`.

    Attributes:
        run: the run directory.
        classes: class names, in probability-column order.
        members: member names, in the order the combiners were fitted on.
        combiner: the combiner (or member) that :meth:`predict_proba` uses by default.
        default_combiner: the one fit-stacker chose on ``blend``.
        fitted_with_tta: whether the combiners were fitted on test-time-augmented outputs.
        temperatures: each member's temperature scaling.
        combiners: every fitted combiner by name (registry order).
        member_hashes: SHA-256 of each member's model, as verified at load.
    """

    def __init__(
        self,
        run: RunDir,
        selection: Selection,
        temperatures: TemperatureScaling,
        combiners: dict[str, Combiner],
        member_hashes: dict[str, str],
        combiner: str | None = None,
    ) -> None:
        self.run = run
        self.classes = run.classes
        self.members = list(selection.members)
        self.default_combiner = selection.default_combiner
        self.fitted_with_tta = selection.tta
        self.temperatures = temperatures
        self.combiners = combiners
        self.member_hashes = member_hashes
        self.combiner = self._resolve(combiner or selection.default_combiner)
        self._models: dict = {}
        self._forward_models: dict = {}

    @classmethod
    def load(cls, run_dir: Path | str | RunDir, combiner: str | None = None) -> FittedEnsemble:
        """Load a run's fitted ensemble, verifying every file against fit-stacker's record.

        Args:
            run_dir: a run directory with trained members and fitted combiners.
            combiner: a combiner name, ``ovr`` (the first one-vs-rest member) or a member
                name; ``None`` = the default chosen on ``blend`` by fit-stacker.

        Returns:
            The fitted ensemble.

        Raises:
            RunError: not a run, no fitted combiners, or a member model or combiner file
                changed since fit-stacker (each message says what to run).
            ConfigError: ``combiner`` is not one of the choices (listed in the message).
        """
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
        selection = Selection.read(run)
        hashes = run.model_hashes(selection.members)  # once per load
        _check_unchanged(run, selection, hashes)
        saved = json.loads((run.combiners_dir / TEMPERATURES).read_text())
        temperatures = TemperatureScaling.from_temperatures(saved["temperatures"])
        registry = registered_combiners()
        unknown = [name for name in selection.combiners if name not in registry]
        if unknown:
            raise RunError(
                f"run {run.root} was fitted with combiners {unknown} that this version does not "
                "have. Run `ensemble fit-stacker` again."
            )
        combiners = {
            name: registry[name].load(run.combiners_dir, member_hashes=hashes)
            for name in selection.combiners
        }
        return cls(run, selection, temperatures, combiners, hashes, combiner)

    # What can be asked for.

    def choices(self) -> list[str]:
        """Every valid ``combiner``: the combiners, the members, and ``ovr`` if there is one."""
        ovr = ["ovr"] if self._ovr_members() else []
        return [*self.combiners, *self.members, *ovr]

    def input_size(self, member: str) -> int:
        """Input side in pixels of a member."""
        return self.run.input_size(member)

    def model(self, member: str):  # -> keras.Model (keras is imported lazily)
        """A member's Keras model, loaded in safe mode on first use."""
        if member not in self._models:
            self._models[member] = load_keras_model(self.run.model_path(member))
        return self._models[member]

    def tta_warning(self, tta: bool) -> str | None:
        """A one-line warning when applied with another TTA setting than fitted with, else None."""
        if tta == self.fitted_with_tta:
            return None
        fitted, applied = ("with", "without") if self.fitted_with_tta else ("without", "with")
        advice = "pass --tta" if self.fitted_with_tta else "run `ensemble fit-stacker --tta`"
        return (
            f"warning: the combiners of {self.run.root} were fitted {fitted} test-time "
            f"augmentation but are applied {applied} it; their weights and temperatures may "
            f"not fit these outputs ({advice} to match)"
        )

    # From images to probabilities.

    def member_outputs(
        self, images: Images, *, tta: bool = False, batch_size: int = 256
    ) -> MemberOutputs:
        """Every member's probabilities and pooled features on ``images``, calibrated.

        Args:
            images: see :data:`Images`; resized to each member's input size as needed.
            tta: average each member over the 8 dihedral views.
            batch_size: images per forward pass.

        Raises:
            DataError: a path cannot be decoded, or an array is not ``(N, H, W, 3)``.
        """
        by_size = self.images_by_size(images)
        probabilities, features = [], []
        for name in self.members:
            member_probabilities, member_features = average_over_views(
                lambda view, name=name: self._forward(name, view, batch_size),
                by_size[self.input_size(name)],
                tta,
            )
            probabilities.append(member_probabilities)
            features.append(member_features.astype(np.float32))
        return self.calibrate(np.stack(probabilities), features)

    def calibrate(self, probabilities: np.ndarray, features: Sequence[np.ndarray]) -> MemberOutputs:
        """Member outputs computed elsewhere (e.g. cached) with the temperatures applied.

        Args:
            probabilities: ``(n_members, N, K)`` raw member probabilities, in member order.
            features: one ``(N, F)`` array per member.
        """
        probabilities = np.asarray(probabilities)
        return MemberOutputs(
            probabilities=probabilities,
            calibrated=self.temperatures.transform(probabilities),
            features=tuple(features),
        )

    def combine(self, outputs: MemberOutputs, combiner: str | None = None) -> np.ndarray:
        """Class probabilities ``(N, K)`` of one combiner or member (default: :attr:`combiner`).

        Raises:
            ConfigError: ``combiner`` is not one of :meth:`choices`.
        """
        name = self._resolve(combiner) if combiner else self.combiner
        if name in self.combiners:
            return self.combiners[name].combine(outputs)
        return outputs.calibrated[self.members.index(name)]

    def combine_all(self, outputs: MemberOutputs) -> dict[str, np.ndarray]:
        """Class probabilities of every member (calibrated), then of every combiner."""
        result = {name: outputs.calibrated[index] for index, name in enumerate(self.members)}
        for name, combiner in self.combiners.items():
            result[name] = combiner.combine(outputs)
        return result

    def predict_proba(
        self, images: Images, *, tta: bool = False, batch_size: int = 256
    ) -> np.ndarray:
        """Class probabilities ``(N, K)`` of :attr:`combiner` on ``images``."""
        return self.combine(self.member_outputs(images, tta=tta, batch_size=batch_size))

    def predict(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Predicted class index per image (names: ``ensemble.classes[index]``)."""
        return self.predict_proba(images, tta=tta, batch_size=batch_size).argmax(axis=1)

    def images_by_size(self, images: Images) -> dict[int, np.ndarray]:
        """``images`` at every member input size: ``{size: (N, size, size, 3)}``.

        Raises:
            DataError: a path cannot be decoded, or an array is not ``(N, H, W, 3)``.
        """
        sizes = sorted({self.input_size(name) for name in self.members})
        if isinstance(images, Mapping):
            missing = [size for size in sizes if size not in images]
            if missing:
                raise DataError(f"images at sizes {missing} are missing. Received: {list(images)}")
            return {size: images[size] for size in sizes}
        if not isinstance(images, np.ndarray):
            images = [_decode(path) for path in images]
        elif images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images must be (N, H, W, 3) RGB. Received: shape={images.shape}")
        return {size: _resized(images, size) for size in sizes}

    def _forward(self, name: str, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """One padded forward pass of member ``name``: ``[probabilities, pooled features]``."""
        if name not in self._forward_models:
            self._forward_models[name] = feature_model(self.model(name))
        padded = _pad_to_multiple(images, batch_size)
        outputs = self._forward_models[name].predict(padded, batch_size=batch_size, verbose=0)
        return [output[: len(images)] for output in outputs]

    def _ovr_members(self) -> list[str]:
        return [name for name in self.members if self.run.member_spec(name).kind == "ovr"]

    def _resolve(self, combiner: str) -> str:
        choices = self.choices()
        if combiner not in choices:
            raise ConfigError(f"unknown combiner {combiner!r}. Choose from {choices}")
        return self._ovr_members()[0] if combiner == "ovr" else combiner


def _check_unchanged(run: RunDir, selection: Selection, hashes: dict[str, str]) -> None:
    """Refuse members or combiner files that changed since fit-stacker recorded them."""
    recorded = selection.member_model_sha256
    changed = [name for name in hashes if hashes[name] != recorded.get(name)]
    if changed:
        raise RunError(
            f"members changed since the combiners were fitted: {changed}. "
            "Run `ensemble fit-stacker` again."
        )
    for name, digest in selection.artifact_sha256.items():
        artifact = run.combiners_dir / name
        if not artifact.is_file() or file_sha256(artifact) != digest:
            raise RunError(
                f"combiner file {artifact} is missing, changed or truncated since fit-stacker "
                "wrote it. Run `ensemble fit-stacker` again."
            )


def _pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Pad a batch with blank images to a multiple of ``multiple`` rows.

    Every forward pass then sees one batch shape, so TensorFlow traces the model once per
    process instead of once per odd-sized last batch (a trace of ResNet50 costs seconds).
    """
    missing = -len(images) % multiple
    if not missing:
        return images
    return np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])


def _resized(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
    """Every image centre-cropped to a square and resized to ``size`` (as when decoding)."""
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images.astype(np.uint8, copy=False)
    return np.stack([crop_and_resize(np.asarray(image, np.uint8), size) for image in images])


def _decode(path: Path | str) -> np.ndarray:
    try:
        return decode_image(Path(path)).pixels
    except UnreadableImage as error:
        raise DataError(f"cannot read image {path}: {error}") from None
