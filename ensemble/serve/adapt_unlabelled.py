"""``ensemble adapt --unlabelled DIR``: a run made for a lab's images without a single label.

Two changes need only the lab's images, no review:

- ``colour="reinhard"``: the lab's colour statistics, pooled over its images, are mapped onto
  the training images' (:class:`~ensemble.data.colour.ColourNormaliser`); the map is saved as
  ``colour.json`` and applied to every image given to the new run;
- ``batchnorm=True``: every member's batch-norm statistics are re-estimated on the lab's images
  (colour-mapped first when both are asked for), one-vs-rest members' backbone copies included
  (:func:`~ensemble.members.batchnorm.reestimate_batchnorm`).

Without labels nothing can be refitted: the new run keeps the base run's temperatures,
combiners, prediction sets, OOD detector and selective thresholds, calibrated on the training
lab's images, and records the new member hashes in copies of their files; the manifest says
that the calibration is inherited, and the report and predict say so. Whether either
change helps is a property of the lab: ``results/adapt.md`` measures both on simulated labs,
and both are off unless asked for. ``ensemble report --run NEW --data LABELLED`` sets the new
run beside its base on a lab's labelled cells.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.errors import ConfigError, DataError
from ensemble.core.fileio import atomic_write_json, atomic_write_text, save_model_atomically
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import stage
from ensemble.core.version import FORMAT_VERSION, __version__
from ensemble.data.colour import METHODS, ColourNormaliser
from ensemble.data.images import UnreadableImage, crop_and_resize_all, decode_image
from ensemble.data.sources import load_dataset
from ensemble.members.batchnorm import class_balance_warning, reestimate_batchnorm
from ensemble.run.directory import COLOUR, MANIFEST, SELECTION, RunDir
from ensemble.serve.adapt_settings import MIN_IMAGES, REFERENCE_IMAGES, STATISTICS_SIZE
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.predict import iter_files

#: Marks a folder this command is making: only such a folder is ever emptied on a rerun.
INCOMPLETE = ".adapt-incomplete"


def adapt_unlabelled(
    base: Path | str,
    unlabelled: Path | str,
    out: Path | str,
    *,
    colour: str | None = None,
    batchnorm: bool = False,
    seed: int = 0,
) -> dict:
    """Derive a run for a lab's images from its unlabelled images alone.

    Args:
        base: the fitted base run (only read).
        unlabelled: a folder of the lab's images (any layout; unreadable files are listed and
            left out), ideally with the classes mixed as in routine work.
        out: the new run directory (must not exist yet, or hold no finished run).
        colour: ``"reinhard"`` to map the lab's colour onto the training images'.
        batchnorm: re-estimate every CNN member's batch-norm statistics on the lab's images.
        seed: seeds the pixel sample of the colour statistics.

    Returns:
        What was done: ``{"images", "skipped", "colour", "batchnorm", "warnings"}``.

    Raises:
        ConfigError: neither option, an unknown colour method, ``out`` is the base run or an
            existing run.
        DataError: fewer than :data:`MIN_IMAGES` readable images in ``unlabelled``.
    """
    if colour is None and not batchnorm:
        raise ConfigError(
            "--unlabelled needs something to do with the images: --colour reinhard, "
            "--batchnorm, or both (or give --labelled cells to fine-tune on)"
        )
    if colour is not None and colour not in METHODS:
        raise ConfigError(f"unknown colour normalisation {colour!r}. Choose from {list(METHODS)}")
    base_dir, out = RunDir.open(base), Path(out)
    _check_out(out, base_dir, Path(unlabelled))
    if base_dir.colour_path.is_file():
        raise ConfigError(
            f"the base run {base_dir.root} already maps a lab's colour; adapt from the run it "
            f"was made from ({base_dir.manifest.get('adapted_from', {}).get('run')})"
        )
    teacher = Ensemble.load(base_dir)
    native, skipped = _read_folder(Path(unlabelled))
    notes: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("ensemble adapt has not finished this run\n")
    for name in ("split.json", "audit.json"):
        if (base_dir.root / name).is_file():
            shutil.copy2(base_dir.root / name, out / name)
    normaliser = None
    if colour is not None:
        stage("adapt", f"colour statistics of {len(native)} lab images and the training images")
        normaliser = ColourNormaliser.fit(
            crop_and_resize_all(native, STATISTICS_SIZE), _reference_images(base_dir, seed), seed
        )
        atomic_write_json(out / COLOUR, normaliser.to_json())

    def as_members_see(size: int) -> np.ndarray:
        images = crop_and_resize_all(native, size)
        return images if normaliser is None else normaliser.transform(images)

    new_hashes = dict(teacher.member_hashes_)
    for name in _trained_members(base_dir):
        stage("adapt", f"member {name}: copied from the base run")
        target = out / "members" / name
        if target.exists():
            shutil.rmtree(target)  # inside a folder this command made (marked incomplete)
        shutil.copytree(base_dir.member_dir(name), target)
    if batchnorm:
        sizes = {name: base_dir.input_size(name) for name in teacher.members_}
        by_size = {size: as_members_see(size) for size in set(sizes.values())}
        predicted = teacher.predict_proba(by_size).argmax(axis=1)
        warning = class_balance_warning(predicted, teacher.classes_)
        if warning:
            print(warning, file=sys.stderr)
            notes.append(warning)
        for name in teacher.members_:  # one-vs-rest members too: they hold a backbone copy
            stage("adapt", f"member {name}: batch-norm statistics on {len(native)} lab images")
            path = out / "members" / name / base_dir.model_path(name).name
            model = load_keras_model(path)
            reestimate_batchnorm(model, by_size[sizes[name]])
            save_model_atomically(model, path)
            new_hashes[name] = file_sha256(path)
    _copy_combiners(base_dir, out, teacher.member_hashes_, new_hashes)
    manifest = dict(base_dir.manifest)
    manifest["pipeline"] = f"{base_dir.manifest.get('pipeline', base_dir.name)}-adapted"
    manifest["format_version"], manifest["package_version"] = FORMAT_VERSION, __version__
    manifest["adapted_from"] = {
        "run": str(base_dir.root.resolve()),
        "member_sha256": teacher.member_hashes_,
        "unlabelled": len(native),
        "colour": colour,
        "colour_sha256": file_sha256(out / COLOUR) if normaliser is not None else None,
        "batchnorm": batchnorm,
        "calibration": "inherited: the base run's, fitted on its own members' outputs",
    }
    atomic_write_json(out / MANIFEST, manifest)  # last: marks the run as made
    (out / INCOMPLETE).unlink()
    return {
        "images": len(native),
        "skipped": skipped,
        "colour": colour,
        "batchnorm": batchnorm,
        "warnings": notes,
    }


def _check_out(out: Path, base: RunDir, unlabelled: Path) -> None:
    """``out`` must be new, empty, or a folder this command left unfinished; nothing else."""
    resolved = out.resolve()
    if resolved == base.root.resolve():
        raise ConfigError(f"--out must be a new run directory, not the base run {base.root}")
    for other, what in (
        (base.root.resolve(), "the base run"),
        (unlabelled.resolve(), "--unlabelled"),
    ):
        if resolved == other or resolved in other.parents:
            raise ConfigError(f"--out {out} would hold {what} ({other}). Choose a new folder.")
    if (out / MANIFEST).is_file():
        raise ConfigError(f"{out} already holds a run. Choose a new --out, or delete it first.")
    if out.is_dir() and any(out.iterdir()) and not (out / INCOMPLETE).is_file():
        raise ConfigError(f"--out {out} is a folder with files in it. Choose a new folder.")


def _trained_members(base: RunDir) -> list[str]:
    """Every trained member of the base (a one-vs-rest member's base stage among them)."""
    return [name for name in base.manifest["members"] if base.is_finished(name)]


def _read_folder(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """The folder's readable images at their own size, and the files left out."""
    if not folder.is_dir():
        raise DataError(f"--unlabelled {folder} is not a folder of images")
    images, skipped = [], []
    for path in iter_files(folder):
        try:
            pixels = decode_image(path).pixels
        except UnreadableImage as error:
            skipped.append(f"{path} ({error})")
            continue
        images.append(pixels)
    if skipped:
        listed = "; ".join(skipped[:5])
        print(f"adapt: {len(skipped)} unreadable files left out: {listed}", file=sys.stderr)
    if len(images) < MIN_IMAGES:
        raise DataError(
            f"--unlabelled {folder} holds {len(images)} readable images; the lab's statistics "
            f"need at least {MIN_IMAGES} (a few hundred, classes mixed, is better)"
        )
    return images, skipped


def _reference_images(base: RunDir, seed: int) -> np.ndarray:
    """Up to :data:`REFERENCE_IMAGES` of the base run's training images, seeded."""
    run = base.with_data(load_dataset(base.data_source()))
    positions = run.split.positions(run.dataset, "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(positions, size=min(REFERENCE_IMAGES, len(positions)), replace=False)
    decoded = (run.dataset.decode(run.dataset.records[int(i)], None).pixels for i in sorted(chosen))
    return crop_and_resize_all(decoded, STATISTICS_SIZE)


def _copy_combiners(base: RunDir, out: Path, old: dict, new: dict) -> None:
    """The base's fitted combiners, with the members' new hashes recorded in every file.

    Every JSON file that records a member's hash gets the new one; ``selection.json`` (written
    last) then records the new hash of each file beside it.
    """
    target = out / base.combiners_dir.name
    shutil.copytree(base.combiners_dir, target)
    replacements = {old[name]: new[name] for name in old if old[name] != new[name]}
    for path in sorted(target.glob("*.json")):
        if path.name != SELECTION:
            atomic_write_text(path, _replaced(path.read_text(), replacements))
    selection = json.loads(_replaced((target / SELECTION).read_text(), replacements))
    selection["artifact_sha256"] = {
        name: file_sha256(target / name) for name in selection.get("artifact_sha256", {})
    }
    atomic_write_json(target / SELECTION, selection)


def _replaced(text: str, replacements: dict[str, str]) -> str:
    for before, after in replacements.items():
        text = text.replace(before, after)
    return text
