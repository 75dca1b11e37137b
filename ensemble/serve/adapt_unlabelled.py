"""``ensemble adapt --unlabelled DIR``: a run made for a lab's images without a single label.

Two changes need only the lab's images, no review:

- ``colour="reinhard"``: the lab's colour statistics, pooled over its images, are mapped onto
  the training images' (:class:`~ensemble.data.colour.ColourNormaliser`); the map is saved as
  ``colour.json`` and applied to every image given to the new run;
- ``batchnorm=True``: every CNN member's batch-norm statistics are re-estimated on the lab's
  images (:func:`~ensemble.members.batchnorm.reestimate_batchnorm`); one-vs-rest heads keep
  their weights and see the re-estimated base member.

Without labels nothing can be refitted: the new run keeps the base run's temperatures,
combiners, prediction sets, OOD detector and selective thresholds, calibrated on the training
lab's images, and records the new member hashes in copies of their files. Whether either
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
from ensemble.core.fileio import atomic_write_json, save_model_atomically
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import stage
from ensemble.data.colour import METHODS, ColourNormaliser
from ensemble.data.images import UnreadableImage, crop_and_resize, decode_image
from ensemble.data.sources import load_dataset
from ensemble.members.batchnorm import class_balance_warning, reestimate_batchnorm
from ensemble.run.directory import MANIFEST, SELECTION, RunDir
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.predict import iter_files

#: Fewest readable images of the lab for its statistics.
MIN_IMAGES = 20
#: Training images of the base run the reference colour statistics are taken from.
REFERENCE_IMAGES = 2000
#: Side of the images the colour statistics are computed at.
STATISTICS_SIZE = 96


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
    if out.resolve() == base_dir.root.resolve():
        raise ConfigError(f"--out must be a new run directory, not the base run {base_dir.root}")
    if (out / MANIFEST).is_file():
        raise ConfigError(f"{out} already holds a run. Choose a new --out, or delete it first.")
    teacher = Ensemble.load(base_dir)
    images, skipped = _read_folder(Path(unlabelled))
    notes: list[str] = []
    if out.exists():
        shutil.rmtree(out)  # an earlier attempt that did not finish: nothing in it is kept
    out.mkdir(parents=True)
    for name in ("split.json", "audit.json"):
        if (base_dir.root / name).is_file():
            shutil.copy2(base_dir.root / name, out / name)
    new_hashes = dict(teacher.member_hashes_)
    for name in teacher.members_:
        stage("adapt", f"member {name}: copied from the base run")
        shutil.copytree(base_dir.member_dir(name), out / "members" / name)
    if batchnorm:
        warning = class_balance_warning(
            teacher.predict_proba(images).argmax(axis=1), teacher.classes_
        )
        if warning:
            print(warning, file=sys.stderr)
            notes.append(warning)
        by_size = teacher.images_by_size(images)
        for name in teacher.members_:
            if base_dir.member_spec(name).kind == "ovr":
                continue
            stage("adapt", f"member {name}: batch-norm statistics on {len(images)} lab images")
            path = out / "members" / name / base_dir.model_path(name).name
            model = load_keras_model(path)
            reestimate_batchnorm(model, by_size[base_dir.input_size(name)])
            save_model_atomically(model, path)
            new_hashes[name] = file_sha256(path)
    _copy_combiners(base_dir, out, teacher.member_hashes_, new_hashes)
    if colour is not None:
        stage("adapt", f"colour statistics of {len(images)} lab images and the training images")
        normaliser = ColourNormaliser.fit(images, _reference_images(base_dir, seed), seed)
        atomic_write_json(out / "colour.json", normaliser.to_json())
    manifest = dict(base_dir.manifest)
    manifest["pipeline"] = f"{base_dir.manifest.get('pipeline', base_dir.name)}-adapted"
    manifest["members"] = list(teacher.members_)
    manifest["adapted_from"] = {
        "run": str(base_dir.root.resolve()),
        "member_sha256": teacher.member_hashes_,
        "unlabelled": len(images),
        "colour": colour,
        "batchnorm": batchnorm,
    }
    atomic_write_json(out / MANIFEST, manifest)  # last: marks the run as made
    return {
        "images": len(images),
        "skipped": skipped,
        "colour": colour,
        "batchnorm": batchnorm,
        "warnings": notes,
    }


def _read_folder(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The folder's readable images at :data:`STATISTICS_SIZE` px, and the files left out."""
    if not folder.is_dir():
        raise DataError(f"--unlabelled {folder} is not a folder of images")
    images, skipped = [], []
    for path in iter_files(folder):
        try:
            pixels = decode_image(path).pixels
        except UnreadableImage as error:
            skipped.append(f"{path} ({error})")
            continue
        images.append(crop_and_resize(pixels, STATISTICS_SIZE))
    if skipped:
        listed = "; ".join(skipped[:5])
        print(f"adapt: {len(skipped)} unreadable files left out: {listed}", file=sys.stderr)
    if len(images) < MIN_IMAGES:
        raise DataError(
            f"--unlabelled {folder} holds {len(images)} readable images; the lab's statistics "
            f"need at least {MIN_IMAGES} (a few hundred, classes mixed, is better)"
        )
    return np.stack(images), skipped


def _reference_images(base: RunDir, seed: int) -> np.ndarray:
    """Up to :data:`REFERENCE_IMAGES` of the base run's training images, seeded."""
    run = base.with_data(load_dataset(base.data_source()))
    positions = run.split.positions(run.dataset, "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(positions, size=min(REFERENCE_IMAGES, len(positions)), replace=False)
    return np.stack(
        [
            crop_and_resize(run.dataset.decode(run.dataset.records[int(i)], None).pixels, 96)
            for i in sorted(chosen)
        ]
    )


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
            path.write_text(_replaced(path.read_text(), replacements))
    selection = json.loads(_replaced((target / SELECTION).read_text(), replacements))
    selection["artifact_sha256"] = {
        name: file_sha256(target / name) for name in selection.get("artifact_sha256", {})
    }
    atomic_write_json(target / SELECTION, selection)


def _replaced(text: str, replacements: dict[str, str]) -> str:
    for before, after in replacements.items():
        text = text.replace(before, after)
    return text
