"""A run directory: everything one pipeline produced, opened with or without its data.

::

    runs/NAME/manifest.json      format version, classes, data source and fingerprint, members
    runs/NAME/audit.json         the audit the split was cleaned with
    runs/NAME/split.json         the split (see ensemble.data.split)
    runs/NAME/members/<member>/  one trained member (see ensemble.members.layout)
    runs/NAME/features/<member>/ cached member outputs per split (see ensemble.members.outputs)
    runs/NAME/combiners/         the fitted combiners (see ensemble.combine.fitting)

:class:`RunDir` needs no data set: paths, the manifest and the members' typed specs. It is what
fit-stacker, predict and report start from. :class:`Run` adds the data set and its split, for
the commands that need pixels (train-members, and fit-stacker when its cache is cold); it is
made by :func:`create_or_open_run` (train-members) or :meth:`RunDir.with_data`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble.core.errors import RunError
from ensemble.core.fileio import atomic_write_json, atomic_write_text, remove_stale_temporaries
from ensemble.core.hashes import file_sha256
from ensemble.core.version import FORMAT_VERSION, __version__
from ensemble.data.sources import Dataset
from ensemble.data.split import Split, load_split, make_split, save_split
from ensemble.members.layout import MemberDir
from ensemble.members.specs import MemberSpec, PipelineSpec, member_spec_from_dict

MANIFEST = "manifest.json"
#: The run's files in ``combiners/``, written by fit-stacker. Each combiner names the files
#: of its own fitted state there (:meth:`ensemble.combine.base.Combiner.files`).
SELECTION = "selection.json"  # written last: marks the combiners as fitted
TEMPERATURES = "temperatures.json"
CALIBRATION_SPLIT = "calibration-split.json"  # which blend images fitted, which calibrated
OOD = "ood.json"
#: A lab's colour map (``ensemble adapt --colour``), in the run's root.
COLOUR = "colour.json"


def conformal_file(model: str) -> str:
    """The file in ``combiners/`` of one combiner's or member's conformal calibration."""
    return f"conformal-{model}.json"


def selective_file(model: str) -> str:
    """The file in ``combiners/`` of one combiner's or member's selective thresholds."""
    return f"selective-{model}.json"


@dataclass(frozen=True)
class RunDir:
    """A run directory opened without its data: paths, manifest and typed member specs.

    Open one with :meth:`open`; it checks the format version once.

    Example:
        >>> run = RunDir.open("runs/pbc-cpu")  # doctest: +SKIP
        >>> run.members, run.input_size(run.members[0])  # doctest: +SKIP
        (['mobilenetv2', 'ovr-mobilenetv2', ...], 64)
    """

    root: Path
    manifest: dict
    _specs: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, root: Path | str) -> RunDir:
        """Open an existing run directory, removing what killed writes left in it.

        Temporary files of atomic writes that a killed process left behind (untouched for an
        hour, so not a write in progress on another node) are deleted; a read-only run
        directory is opened as it is.

        Raises:
            RunError: ``root`` is not a run directory, or was written by another format version.
        """
        manifest = read_manifest(root)
        try:
            remove_stale_temporaries(root)
        except OSError:  # read-only or shared with other users: cleaning is best effort
            pass
        return cls(Path(root), manifest)

    # Paths: the only place that knows the layout.

    @property
    def manifest_path(self) -> Path:
        """``manifest.json``: written last when the run is created."""
        return self.root / MANIFEST

    @property
    def split_path(self) -> Path:
        """``split.json``."""
        return self.root / "split.json"

    @property
    def audit_path(self) -> Path:
        """``audit.json``: the audit the split was cleaned with (absent if it was not)."""
        return self.root / "audit.json"

    @property
    def colour_path(self) -> Path:
        """``colour.json``: the lab's colour map onto the training images' (absent: none).

        Written by ``ensemble adapt --unlabelled --colour``; applied by the run's
        :class:`~ensemble.serve.ensemble.Ensemble` to every image it is given. The run's own
        split images are the training lab's and are scored unmapped (report on a split).
        """
        return self.root / COLOUR

    @property
    def combiners_dir(self) -> Path:
        """Where fit-stacker writes the fitted combiners."""
        return self.root / "combiners"

    def features_dir(self, member: str) -> Path:
        """Where a member's cached outputs per split are kept."""
        return self.root / "features" / member

    def member(self, name: str) -> MemberDir:
        """The files of member ``name`` (:class:`~ensemble.members.layout.MemberDir`)."""
        return MemberDir(self.root / "members" / name)

    def member_dir(self, name: str) -> Path:
        """Directory of member ``name``."""
        return self.member(name).path

    def model_path(self, name: str) -> Path:
        """The trained model of member ``name`` (``model.keras``)."""
        return self.member(name).model

    # What the manifest and the member directories say.

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.root.name

    @property
    def classes(self) -> list[str]:
        """Class names, in label-index order."""
        return list(self.manifest["classes"])

    @property
    def members(self) -> list[str]:
        """The ensemble's members: those of the manifest whose spec has ``combine`` true.

        A member with ``combine = false`` is a stage other members start from; it is trained
        but never combined. A member not trained yet counts as combined (its spec is unknown).
        """
        return [name for name in self.manifest["members"] if self._combines(name)]

    def member_spec(self, name: str) -> MemberSpec:
        """The resolved spec a member was trained from (``spec.json``), validated.

        Raises:
            RunError: the member has no saved spec (it never started training).
            ConfigError: the saved spec is not valid for this version of the package.
        """
        if name not in self._specs:
            self._specs[name] = member_spec_from_dict(
                self._saved_spec(name), source=str(self.member(name).spec)
            )
        return self._specs[name]

    def input_size(self, name: str) -> int:
        """Input side in pixels of member ``name`` (a one-vs-rest member's is its base's)."""
        spec = self.member_spec(name)
        if spec.kind == "ovr":
            return self.input_size(spec.ovr.base_member)
        return spec.input_size

    def training_metrics(self, name: str) -> dict:
        """What training recorded for a finished member (``metrics.json``)."""
        return json.loads(self.member(name).metrics.read_text())

    def is_finished(self, name: str) -> bool:
        """True if member ``name`` completed training."""
        return self.member(name).is_finished()

    def trained_members(self) -> list[str]:
        """The ensemble's members (:attr:`members`), all finished.

        Raises:
            RunError: a member is not trained yet (the message names it and the command to run).
        """
        names = self.members
        missing = [name for name in names if not self.is_finished(name)]
        if missing:
            raise RunError(
                f"members not trained yet in {self.root}: {missing}. Run `ensemble "
                "train-members` first (and let it finish)."
            )
        return names

    def model_hashes(self, names: list[str]) -> dict[str, str]:
        """SHA-256 of each named member's ``model.keras``."""
        return {name: file_sha256(self.model_path(name)) for name in names}

    # The data the run was made from.

    def data_source(self, given: Path | None = None) -> Path:
        """Where the run's data is: ``given`` (``--data``), else the path in the manifest.

        New manifests record an absolute path, so a run works from any working directory;
        older ones recorded it relative to the folder the run was created from.

        Raises:
            RunError: nothing is given and the recorded path does not exist (data moved).
        """
        if given is not None:
            return Path(given)
        recorded = Path(self.manifest["data_source"])
        if not recorded.exists():
            relative = "" if recorded.is_absolute() else f" (relative to {Path.cwd()})"
            raise RunError(
                f"the data of run {self.root} is not at {recorded}{relative}, the path its "
                "manifest records. Pass --data with the data's current location."
            )
        return recorded

    def with_data(self, dataset: Dataset) -> Run:
        """The run with its data set and split, checked against each other.

        Raises:
            RunError: ``dataset`` has other classes, or is not the data the split was made from.
        """
        if self.classes != list(dataset.classes):
            raise RunError(
                f"run {self.root} has classes {self.classes} but the data has {dataset.classes}"
            )
        split = load_split(self.split_path, dataset)
        return Run(self.root, dataset, split, self.manifest)

    def _saved_spec(self, name: str) -> dict:
        path = self.member(name).spec
        if not path.is_file():
            raise RunError(
                f"member {name!r} of run {self.root} has no spec.json: it never started "
                "training. Run `ensemble train-members` first."
            )
        return json.loads(path.read_text())

    def _combines(self, name: str) -> bool:
        if not self.member(name).spec.is_file():
            return True
        return bool(self._saved_spec(name).get("combine", True))


@dataclass
class Run:
    """A run directory opened with its data and split (what training needs)."""

    root: Path
    dataset: Dataset
    split: Split
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> RunDir:
        """The same run without its data: paths, manifest, member specs."""
        return RunDir(Path(self.root), self.manifest)

    def member_dir(self, name: str) -> Path:
        """Directory of member ``name``."""
        return self.directory.member_dir(name)

    def labels(self, split_name: str) -> np.ndarray:
        """Class index of every image of one split (no pixels decoded)."""
        return self.dataset.labels[self.split.positions(self.dataset, split_name)]

    def images(self, split_name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(images, labels)`` of one split at ``size`` px, cached per size.

        Raises:
            RunError: an image of the split can no longer be decoded.
        """
        if size not in self._cache:
            images, _, failures = self.dataset.load_images(size, description=f"decoding {size}px")
            used = {i for name in ("train", "val", "blend", "test") for i in self.split.ids(name)}
            broken = [f for f in failures if f.id in used]
            if broken:
                raise RunError(
                    f"image {broken[0].id} of the split cannot be read: {broken[0].reason}"
                )
            self._cache[size] = images
        positions = self.split.positions(self.dataset, split_name)
        return self._cache[size][positions], self.dataset.labels[positions]


def create_or_open_run(root: Path, dataset: Dataset, pipeline: PipelineSpec) -> Run:
    """Open the run at ``root``, or create it: audit (if the pipeline cleans), split, manifest.

    The manifest records the data source as an absolute path, so later commands work from any
    working directory.

    Raises:
        RunError: the run exists but was made from other data, classes or format version.
    """
    root = Path(root)
    if (root / MANIFEST).is_file():
        return open_run(root, dataset)
    root.mkdir(parents=True, exist_ok=True)
    excluded: list[str] = []
    groups: list[list[str]] = []
    if pipeline.clean:
        from ensemble.data.audit import run_audit

        report = run_audit(dataset)
        atomic_write_text(RunDir(root, {}).audit_path, report.to_json())
        excluded = sorted(report.excluded_ids())
        groups = report.groups
    split = make_split(dataset, groups, pipeline.fractions, pipeline.split_seed, excluded)
    save_split(split, dataset, RunDir(root, {}).split_path)
    manifest = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "pipeline": pipeline.name,
        "classes": list(dataset.classes),
        "data_source": str(Path(dataset.root).resolve()),
        "data_fingerprint": dataset.fingerprint(),
        "members": [member.name for member in pipeline.members],
    }
    atomic_write_json(root / MANIFEST, manifest)  # last: marks the run as created
    return Run(root, dataset, split, manifest)


def read_manifest(root: Path | str) -> dict:
    """Read a run's manifest, refusing a missing one or one of another format version.

    Raises:
        RunError: ``root`` is not a run directory, or was written by another format version.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise RunError(
            f"{root} is not a run directory (no manifest.json). Run train-members first."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RunError(
            f"run {root} was written by format version {manifest.get('format_version')} "
            f"(blood-ensemble {manifest.get('package_version')}); this version reads "
            f"{FORMAT_VERSION}. Start a new run directory."
        )
    return manifest


def open_run(root: Path | str, dataset: Dataset) -> Run:
    """Open an existing run and check that ``dataset`` is the data it was made from.

    Raises:
        RunError: not a run directory, another format version, other classes or other data.
    """
    return RunDir.open(root).with_data(dataset)
