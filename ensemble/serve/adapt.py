"""``ensemble adapt``: a fitted run made to work in a lab's images from its reviewed cells.

A lab's microscope, camera, stain and crop differ from the training lab's. From cells a person
reviewed there (a ``path,label`` CSV, such as the review page's ``corrections.csv``), ``adapt``
derives a new run from the base run — the base is only read, its members' hashes recorded:

1. the lab's cells are split, stratified by class and keeping duplicates together, into a part
   that fine-tunes the members (``train``), a part that watches them (``val``), and a held-out
   part (``blend``) on which the combiners are refitted and the temperatures, prediction sets,
   OOD threshold and selective thresholds recalibrated;
2. a replay sample of the base run's own training images joins ``train`` (``replay`` times as
   many as the lab gives, stratified by class), so the members do not forget the base lab;
   and, unless ``calibration_replay`` is 0, samples of the base run's ``val`` and ``blend``
   images join the lab's watching and held-out parts: a few hundred reviewed cells leave a
   few dozen to calibrate on, far too few for a miss rate of 1 % (the sets would hold every
   class and everything would be referred), so the calibration is made on the lab's held-out
   cells *and* base cells — its guarantee then holds for that mix, which the output says;
3. every CNN member is fine-tuned from its base weights for a few epochs at a low rate, with
   its own augmentation; one-vs-rest heads are retrained on their fine-tuned base member;
4. the combiners are fitted as fit-stacker would, with the base run's members and TTA setting.

With ``colour="reinhard"`` the lab's colour is first mapped onto the training images' (the
map fitted on the reviewed cells, and on an ``unlabelled`` folder of the lab's images when one
is given; :mod:`ensemble.serve.lab_colour`): the members are fine-tuned and the referral
calibrated on the mapped cells (written to ``lab-cells/``), and the new run maps every image
it is given, as a run made by ``adapt --unlabelled --colour`` does. The base replay is not
mapped: it is in the training images' colours already.

The new run is a run like any other (``predict``, ``report``, the API, ``--ray``); it lists its
images in ``data.csv`` (absolute paths), so it does not depend on the folder it was made from.
Interrupted, it resumes from the members' checkpoints.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError, DataError, did_you_mean
from ensemble.core.fileio import atomic_write_json, atomic_write_text
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import stage
from ensemble.core.version import FORMAT_VERSION, __version__
from ensemble.data.images import save_png
from ensemble.data.sources import Dataset, load_dataset
from ensemble.data.split import Split, make_split, save_split
from ensemble.members.layout import MemberDir
from ensemble.members.ovr import train_ovr_member
from ensemble.members.specs import MemberSpec
from ensemble.members.training import TrainingData, train_member
from ensemble.run.directory import COLOUR, MANIFEST, RunDir
from ensemble.serve.adapt_settings import (
    DEFAULT_CALIBRATION_REPLAY,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_REPLAY,
    LAB_FRACTIONS,
    MIN_PER_CLASS,
)
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.lab_colour import (
    check_base_unmapped,
    check_method,
    fit_lab_colour,
    read_image_folder,
)
from ensemble.serve.predict import iter_files

#: The colour-mapped copies of the reviewed cells (``colour="reinhard"``), their list, and
#: what they were made from (a rerun maps again only when that changed).
LAB_CELLS = "lab-cells"
LAB_CELLS_CSV = "lab-cells.csv"
LAB_CELLS_INPUTS = "lab-cells-inputs.json"


def adapt(
    base: Path | str,
    labelled: Path | str,
    out: Path | str,
    *,
    data_root: Path | str | None = None,
    colour: str | None = None,
    unlabelled: Path | str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    replay: float = DEFAULT_REPLAY,
    calibration_replay: int = DEFAULT_CALIBRATION_REPLAY,
    seed: int = 0,
) -> dict[str, dict]:
    """Derive a run adapted to a lab's reviewed cells from a fitted base run.

    Args:
        base: the fitted base run (only read).
        labelled: the lab's reviewed cells, a ``path,label`` CSV (labels among the base run's
            classes).
        out: the new run directory (an existing one made from the same base and cells resumes).
        data_root: the folder the CSV's relative paths start from (default: the CSV's folder).
        colour: ``"reinhard"`` to map the lab's colour onto the training images' before
            fine-tuning (the new run then maps every image it is given).
        unlabelled: a folder of more of the lab's images, unlabelled, whose colour statistics
            join the reviewed cells' (only with ``colour``).
        epochs: fine-tuning epochs of every CNN member.
        learning_rate: the fine-tuning rate (constant after no warm-up; cosine to 1 %).
        replay: base training images mixed in per lab training image.
        calibration_replay: base ``blend`` images joining the lab's held-out part, on which
            the combiners are refitted and the referral calibrated, and as many base ``val``
            images joining the part that watches fine-tuning and fits the temperatures (0: the
            lab's cells alone, for a lab with enough of them for its alpha).
        seed: seeds the lab's split, the replay sample and the fine-tuning.

    Returns:
        Member name → its training metrics.

    Raises:
        DataError: a label that is not a class of the base run (with a close match), or a
            class with fewer than :data:`MIN_PER_CLASS` cells.
        DataError: with ``colour``, too few lab images for the colour statistics (fewer than
            :data:`~ensemble.serve.adapt_settings.MIN_IMAGES` reviewed cells and unlabelled
            images together), or ``unlabelled`` is not a folder.
        ConfigError: ``out`` is the base run; a bad setting; an unknown colour method;
            ``unlabelled`` without ``colour``; ``colour`` with a base run that maps a lab's
            colour already; or ``out`` holds an adapt begun with another ``colour``.
    """
    check_method(colour)
    if unlabelled is not None and colour is None:
        raise ConfigError(
            "with --labelled cells, --unlabelled images serve the colour map's statistics: "
            "add --colour reinhard, or leave --unlabelled out"
        )
    base_dir, out = RunDir.open(base), Path(out)
    if out.resolve() == base_dir.root.resolve():
        raise ConfigError(f"--out must be a new run directory, not the base run {base_dir.root}")
    if epochs < 1 or not 0 < learning_rate < 1 or replay < 0 or calibration_replay < 0:
        raise ConfigError(
            "epochs must be >= 1, learning_rate in (0, 1), replay >= 0 and "
            f"calibration_replay >= 0. Received: epochs={epochs}, "
            f"learning_rate={learning_rate}, replay={replay}, "
            f"calibration_replay={calibration_replay}"
        )
    if colour is not None:
        check_base_unmapped(base_dir)
    _check_same_colour(out, colour)
    teacher = Ensemble.load(base_dir)
    lab = load_dataset(labelled, root=data_root)
    _check_labels(lab, base_dir.classes)
    base_data = load_dataset(base_dir.data_source())
    if not (out / MANIFEST).is_file():
        _warn_copies(lab, base_data)
    if colour is not None:
        lab = _colour_mapped(lab, base_dir, out, unlabelled, seed)
    replays = (replay, calibration_replay)
    run = _adapted_run(base_dir, teacher, base_data, lab, out, replays, colour, seed)
    results = {}
    for name in run.manifest["members"]:
        spec = base_dir.member_spec(name)
        if spec.kind == "ovr":
            results[name] = train_ovr_member(spec, run)
            continue
        results[name] = _fine_tune(spec, base_dir, run, epochs, learning_rate, seed)
    from ensemble.combine.fitting import fit_combiners

    lab_ids = {str(record.path.resolve()) for record in lab.records}
    held_out = [run.dataset.records[i].id for i in run.split.positions(run.dataset, "blend")]
    own = sum(image_id in lab_ids for image_id in held_out)
    mix = (
        f" and {len(held_out) - own} base blend images; the referral's guarantees hold for that "
        "mix, not for the lab's cells alone (--calibration-replay 0 for those)"
        if len(held_out) > own
        else ""
    )
    print(
        f"adapt: refitting the combiners and the referral on {own} held-out lab cells{mix}",
        file=sys.stderr,
    )
    fit_combiners(run, tta=teacher.fitted_with_tta_, members=list(teacher.members_))
    return results


def _check_labels(lab: Dataset, classes: list[str]) -> None:
    """Every label a class of the base run; every class present with enough cells."""
    for label in lab.classes:
        if label not in classes:
            raise DataError(
                f"label {label!r} of the reviewed cells is not a class of the base run."
                f"{did_you_mean(label, classes)} Classes: {classes}. Rename it in the CSV."
            )
    counts = {name: sum(record.label == name for record in lab.records) for name in lab.classes}
    few = {name: count for name, count in counts.items() if count < MIN_PER_CLASS}
    if few:
        raise DataError(
            f"too few reviewed cells for classes {few}: each needs at least {MIN_PER_CLASS} "
            "to be fine-tuned on and held out. Review more cells of them, or leave them out."
        )
    if lab.skipped:
        listed = ", ".join(f"{item.id} ({item.reason})" for item in lab.skipped[:5])
        print(f"adapt: {len(lab.skipped)} unreadable files left out: {listed}", file=sys.stderr)


def _adapted_run(
    base: RunDir, teacher, base_data, lab, out: Path, replays, colour: str | None, seed: int
):
    """Create (or reopen) the new run: data.csv, split.json and manifest.json (last).

    ``replays`` is ``(replay, calibration_replay)``: base training images per lab training
    image, and the number of base ``blend`` images joining the held-out part; ``colour`` the
    colour map the cells were mapped with (recorded with its hash).
    """
    if (out / MANIFEST).is_file():
        run = RunDir.open(out)
        return run.with_data(load_dataset(out / "data.csv"))
    out.mkdir(parents=True, exist_ok=True)
    base_run = base.with_data(base_data)
    replay, calibration_replay = replays
    count = len(lab.records) * LAB_FRACTIONS["train"] * replay
    replayed = _replay_sample(base_run, "train", count, seed)
    calibration = _replay_sample(base_run, "blend", calibration_replay, seed)
    watching = _replay_sample(base_run, "val", calibration_replay, seed)
    rows = [(str(r.path.resolve()), r.label) for r in lab.records]
    rows += [(str(r.path.resolve()), r.label) for r in replayed + calibration + watching]
    text = "path,label\n" + "".join(f"{_csv_cell(path)},{label}\n" for path, label in rows)
    atomic_write_text(out / "data.csv", text)
    combined = load_dataset(out / "data.csv")
    if combined.classes != base.classes:
        raise DataError(
            f"the replay sample and the reviewed cells hold classes {combined.classes}; the "
            f"base run has {base.classes}"
        )
    lab_paths = {str(r.path.resolve()) for r in lab.records}
    lab_view = replace(combined, records=[r for r in combined.records if r.id in lab_paths])
    split = make_split(lab_view, (), LAB_FRACTIONS, seed)
    assignment = dict(split.assignment)
    replayed_to = {str(r.path.resolve()): "blend" for r in calibration}
    replayed_to |= {str(r.path.resolve()): "val" for r in watching}
    assignment.update(
        {r.id: replayed_to.get(r.id, "train") for r in combined.records if r.id not in lab_paths}
    )
    if not any(part == "val" for part in assignment.values()):
        raise DataError(
            f"the {len(lab.records)} reviewed cells leave none to watch the fine-tuning and fit "
            "the temperatures on; review more cells, or keep --calibration-replay above 0"
        )
    split = Split(assignment, seed, LAB_FRACTIONS, combined.fingerprint())
    save_split(split, combined, out / "split.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "pipeline": f"{base.manifest.get('pipeline', base.name)}-adapted",
        "classes": list(base.classes),
        "data_source": str((out / "data.csv").resolve()),
        "data_fingerprint": combined.fingerprint(),
        "members": list(teacher.members_),
        "adapted_from": {
            "run": str(base.root.resolve()),
            "member_sha256": teacher.member_hashes_,
            "labelled": len(lab.records),
            "replayed": len(replayed),
            "calibration_replayed": len(calibration),
            "validation_replayed": len(watching),
        },
    }
    if colour is not None:
        inputs = json.loads((out / LAB_CELLS_INPUTS).read_text())
        manifest["adapted_from"]["colour"] = colour
        manifest["adapted_from"]["colour_sha256"] = file_sha256(out / COLOUR)
        manifest["adapted_from"]["unlabelled"] = len(inputs["unlabelled"] or [])
    atomic_write_json(out / MANIFEST, manifest)  # last: marks the run as created
    return RunDir.open(out).with_data(combined)


def _check_same_colour(out: Path, colour: str | None) -> None:
    """A rerun into ``out`` asks for the colour map the run was begun with.

    Raises:
        ConfigError: ``out`` holds a finished or unfinished adapt made with another ``colour``
            (its members were, or are being, fine-tuned on cells mapped otherwise).
    """
    if (out / MANIFEST).is_file():
        before = (json.loads((out / MANIFEST).read_text()).get("adapted_from") or {}).get("colour")
    elif (out / COLOUR).is_file():
        before = json.loads((out / COLOUR).read_text()).get("method")
    else:
        return
    if before != colour:
        raise ConfigError(
            f"{out} holds an adapt begun with --colour {before or '(none)'}; this call asks for "
            f"--colour {colour or '(none)'}. Rerun with --colour {before} to resume it, or choose "
            "a new --out."
            if before
            else f"{out} holds an adapt begun without --colour; this call asks for --colour "
            f"{colour}. Rerun without --colour to resume it, or choose a new --out."
        )


def _warn_copies(lab: Dataset, base_data: Dataset) -> None:
    """Warn about reviewed cells byte-identical to the base run's images."""
    trained_on = {record.content_hash for record in base_data.records}
    copies = [record.id for record in lab.records if record.content_hash in trained_on]
    if copies:
        print(
            f"adapt: warning: {len(copies)} reviewed cells are byte-identical to images of the "
            f"base run's data (e.g. {copies[0]}); they teach the lab nothing new",
            file=sys.stderr,
        )


def _colour_mapped(
    lab: Dataset, base: RunDir, out: Path, unlabelled: Path | str | None, seed: int
) -> Dataset:
    """The reviewed cells with the lab's colour mapped onto the training images'.

    Fits the map on the cells (and the ``unlabelled`` folder's images), writes it to
    ``colour.json``, the mapped cells as PNG to ``lab-cells/`` and their list to
    ``lab-cells.csv`` (last: a rerun finds it and reads it back instead of mapping again).
    """
    listed = out / LAB_CELLS_CSV
    inputs = _colour_inputs(lab, unlabelled, seed)
    if listed.is_file():
        made_from = out / LAB_CELLS_INPUTS
        if made_from.is_file() and json.loads(made_from.read_text()) == inputs:
            return load_dataset(listed)
        if (out / MANIFEST).is_file():
            raise ConfigError(
                f"{out} was adapted from other reviewed cells, --unlabelled images or --seed "
                "than this call's. Choose a new --out to adapt from these."
            )
        listed.unlink()  # begun from other inputs and not finished: map these instead
    out.mkdir(parents=True, exist_ok=True)
    cells = [lab.decode(record, None).pixels for record in lab.records]
    extra = read_image_folder(Path(unlabelled), minimum=0)[0] if unlabelled is not None else []
    stage("adapt", f"colour statistics of {len(cells) + len(extra)} lab images")
    normaliser = fit_lab_colour(base, cells + extra, seed)
    atomic_write_json(out / COLOUR, normaliser.to_json())
    folder = out / LAB_CELLS
    folder.mkdir(exist_ok=True)
    rows = []
    for index, (record, pixels) in enumerate(zip(lab.records, cells, strict=True)):
        path = folder / f"{index:05d}-{record.path.stem}.png"
        save_png(normaliser.transform(pixels), path)
        rows.append(f"{_csv_cell(str(path.resolve()))},{record.label}\n")
    atomic_write_json(out / LAB_CELLS_INPUTS, inputs)
    atomic_write_text(listed, "path,label\n" + "".join(rows))
    return load_dataset(listed)


def _colour_inputs(lab: Dataset, unlabelled: Path | str | None, seed: int) -> dict:
    """What the mapped cells were made from: cells and labels, the unlabelled files, the seed."""
    folder = Path(unlabelled) if unlabelled is not None else None
    return {
        "cells": [[record.content_hash, record.label] for record in lab.records],
        "unlabelled": (
            None
            if folder is None
            else [path.relative_to(folder).as_posix() for path in iter_files(folder)]
        ),
        "seed": seed,
    }


def _replay_sample(base_run, split: str, count: float, seed: int) -> list:
    """About ``count`` of the base run's images of ``split``, stratified by class, seeded."""
    if count <= 0:
        return []
    rng = np.random.default_rng(seed)
    positions = base_run.split.positions(base_run.dataset, split)
    labels = base_run.dataset.labels[positions]
    share = min(1.0, count / max(len(positions), 1))
    chosen = []
    for label in np.unique(labels):
        mine = positions[labels == label]
        take = max(1, int(round(share * len(mine))))
        chosen += rng.choice(mine, size=min(take, len(mine)), replace=False).tolist()
    return [base_run.dataset.records[int(i)] for i in sorted(chosen)]


def _csv_cell(path: str) -> str:
    """A path as a CSV cell (quoted when it needs to be)."""
    if any(character in path for character in ',"\n'):
        return '"' + path.replace('"', '""') + '"'
    return path


def _fine_tune(
    spec: MemberSpec, base: RunDir, run, epochs: int, learning_rate: float, seed: int
) -> dict:
    """Fine-tune one CNN member from its base weights on the lab's cells and the replay."""
    tuned = replace(
        spec,
        init_from=str(base.model_path(spec.name)),
        weights="none",
        seed=spec.seed + 1000 + seed,
        schedule=replace(
            spec.schedule, epochs=epochs, learning_rate=learning_rate, warmup_epochs=0.0
        ),
        early_stopping=replace(spec.early_stopping, patience=0, keep="last"),
        distill=replace(spec.distill, teachers=()),  # the lab's labels teach here
    )
    train_images, train_labels = run.images("train", spec.input_size)
    val_images, val_labels = run.images("val", spec.input_size)
    data = TrainingData(
        train_images, train_labels, val_images, val_labels, len(run.dataset.classes)
    )
    return train_member(
        tuned,
        data,
        MemberDir(run.member_dir(spec.name)).path,
        init_weights=base.model_path(spec.name),
    )
