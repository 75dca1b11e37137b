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
from ensemble.core.errors import ConfigError
from ensemble.core.fileio import atomic_write_json, atomic_write_text, save_model_atomically
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import stage
from ensemble.core.version import FORMAT_VERSION, __version__
from ensemble.data.images import crop_and_resize_all
from ensemble.members.batchnorm import class_balance_warning, reestimate_batchnorm
from ensemble.run.directory import COLOUR, MANIFEST, SELECTION, RunDir
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.lab_colour import (
    check_base_unmapped,
    check_method,
    fit_lab_colour,
    read_image_folder,
)

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
        DataError: fewer than :data:`~ensemble.serve.adapt_settings.MIN_IMAGES` readable
            images in ``unlabelled``.
    """
    if colour is None and not batchnorm:
        raise ConfigError(
            "--unlabelled needs something to do with the images: --colour reinhard, "
            "--batchnorm, or both (or give --labelled cells to fine-tune on)"
        )
    check_method(colour)
    base_dir, out = RunDir.open(base), Path(out)
    _check_out(out, base_dir, Path(unlabelled))
    check_base_unmapped(base_dir)
    teacher = Ensemble.load(base_dir)
    native, skipped = read_image_folder(Path(unlabelled))
    notes: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("ensemble adapt has not finished this run\n")
    for name in ("split.json", "audit.json"):
        if (base_dir.root / name).is_file():
            shutil.copy2(base_dir.root / name, out / name)
    normaliser = None
    if colour is not None:
        stage("adapt", f"colour statistics of {len(native)} lab images and the training images")
        normaliser = fit_lab_colour(base_dir, native, seed)
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
