"""``ensemble distill``: the whole fitted ensemble as the teacher of one fast student.

The student is one CNN member trained on the ensemble's probabilities (its default combiner,
optionally over the 8 dihedral views) on the clean training images, while it sees them with its
own augmentation (:mod:`ensemble.members.distillation`): it learns what the ensemble says a
cell is, whatever the acquisition did to it. It is saved as a run of its own — the base run's
split and audit, one member — and fitted like any run (temperatures, calibration, referral), so
``predict``, ``report``, the Python API and ``--ray`` load it as they load the ensemble.

The new run records where its teacher came from (``manifest.json``: ``distilled_from``: the
base run, its combiner, its members' model hashes, whether the teacher used TTA); the base run
is only read. The teacher's probabilities are cached in the new run (``teacher.npz``), so an
interrupted distillation resumes from the student's last epoch without asking the teacher
again.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError, RunError
from ensemble.core.fileio import atomic_write_bytes, atomic_write_json
from ensemble.members.distillation import temper
from ensemble.members.specs import MemberSpec
from ensemble.members.training import TrainingData, train_member
from ensemble.run.directory import MANIFEST, RunDir
from ensemble.serve.ensemble import Ensemble

#: The teacher's probabilities on the training images, cached in the student's run.
TEACHER_CACHE = "teacher.npz"


def distill(
    base: Path | str,
    out: Path | str,
    spec: MemberSpec,
    *,
    dataset,
    teacher_tta: bool | None = None,
    force: bool = False,
) -> dict:
    """Train one student on the fitted ensemble of ``base`` into a new run at ``out``.

    Args:
        base: a fitted run (train-members, then fit-stacker): the teacher.
        out: the new run directory (created; an existing one from the same base resumes).
        spec: the student's member spec; its ``[distill]`` weight and temperature apply, its
            ``teachers`` are replaced by the ensemble. ``init_from`` may name a member of the
            base run, whose weights the student starts from.
        dataset: the base run's data (:func:`ensemble.data.sources.load_dataset`).
        teacher_tta: the teacher over the 8 dihedral views; ``None`` = as its combiners were
            fitted.
        force: start the student again.

    The new run is then fitted as fit-stacker would (with the teacher's TTA setting), its
    default being the student itself: its own temperature, prediction sets, OOD detector and
    selective thresholds.

    Returns:
        The student's training metrics.

    Raises:
        RunError: ``base`` is not fitted, or ``out`` holds a run distilled from something else.
        ConfigError: ``out`` is ``base``, ``base`` maps a lab's colour, or ``init_from`` names
            nothing usable.
    """
    base_dir, out = RunDir.open(base), Path(out)
    if out.resolve() == base_dir.root.resolve():
        raise ConfigError(f"--out must be a new run directory, not the base run {base_dir.root}")
    teacher = Ensemble.load(base_dir)
    if teacher.colour_ is not None:
        raise ConfigError(
            f"{base_dir.root} maps a lab's colour onto the training images', which would "
            "map the training images themselves here: distill its base run "
            f"({base_dir.manifest['adapted_from']['run']}) instead"
        )
    tta = teacher.fitted_with_tta_ if teacher_tta is None else teacher_tta
    record = {
        "run": str(base_dir.root.resolve()),
        "combiner": teacher.combiner_,
        "member_sha256": teacher.member_hashes_,
        "tta": tta,
    }
    run = _student_run(base_dir, out, spec.name, record)
    base_run = base_dir.with_data(dataset)
    spec = replace(spec, distill=replace(spec.distill, teachers=(f"ensemble:{base_dir.name}",)))
    init_weights = _init_weights(spec, base_dir)
    if init_weights is not None:
        spec = replace(spec, init_from=str(init_weights))
    probabilities = _teacher_probabilities(teacher, base_run, run, tta)
    train_images, train_labels = base_run.images("train", spec.input_size)
    val_images, val_labels = base_run.images("val", spec.input_size)
    data = TrainingData(
        train_images,
        train_labels,
        val_images,
        val_labels,
        len(teacher.classes_),
        temper(probabilities, spec.distill.temperature),
    )
    metrics = train_member(
        spec, data, run.member_dir(spec.name), force=force, init_weights=init_weights
    )
    from ensemble.combine.fitting import fit_combiners

    print("distill: calibrating the student's run (temperature, referral)", file=sys.stderr)
    fit_combiners(run.with_data(dataset), tta=tta, members=[spec.name], default=spec.name)
    return metrics


def _student_run(base: RunDir, out: Path, name: str, record: dict) -> RunDir:
    """The student's run: the base's split and audit, a manifest naming the one member.

    Raises:
        RunError: ``out`` is a run distilled from another base, teacher or student.
    """
    if (out / MANIFEST).is_file():
        run = RunDir.open(out)
        if run.manifest.get("distilled_from") != record or run.manifest["members"] != [name]:
            raise RunError(
                f"{out} holds another run (distilled from {run.manifest.get('distilled_from')}, "
                f"members {run.manifest['members']}). Choose another --out."
            )
        return run
    out.mkdir(parents=True, exist_ok=True)
    for source in (base.split_path, base.audit_path):
        if source.is_file():
            shutil.copyfile(source, out / source.name)
    manifest = dict(base.manifest) | {
        "pipeline": f"{base.manifest.get('pipeline', base.name)}-distilled",
        "members": [name],
        "distilled_from": record,
    }
    manifest.pop("fit", None)
    atomic_write_json(out / MANIFEST, manifest)  # last: marks the run as created
    return RunDir.open(out)


def _init_weights(spec: MemberSpec, base: RunDir) -> Path | None:
    """What the student starts from: a base run member's ``model.keras``, or a ``.keras`` file."""
    if not spec.init_from:
        return None
    if spec.init_from in base.manifest["members"]:
        if not base.is_finished(spec.init_from):
            raise RunError(f"member {spec.init_from!r} of {base.root} has not finished training")
        return base.model_path(spec.init_from)
    path = Path(spec.init_from)
    if not path.is_file():
        raise ConfigError(
            f"init_from {spec.init_from!r} is neither a member of {base.root} "
            f"({base.manifest['members']}) nor a .keras file"
        )
    return path


def _teacher_probabilities(teacher: Ensemble, base_run, run: RunDir, tta: bool) -> np.ndarray:
    """The ensemble's probabilities on the clean training images, cached in the student's run."""
    cache = run.root / TEACHER_CACHE
    ids = base_run.split.ids("train")
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if saved["ids"].tolist() == list(ids):
                return saved["probabilities"]
    size = max(teacher.input_size(name) for name in teacher.members_)
    images, _ = base_run.images("train", size)
    views = " over the 8 dihedral views" if tta else ""
    print(
        f"distill: the ensemble ({teacher.combiner_}) on {len(images)} training images{views}",
        file=sys.stderr,
    )
    probabilities = teacher.predict_proba(images, tta=tta).astype(np.float32)
    import io

    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(ids), probabilities=probabilities)
    atomic_write_bytes(cache, buffer.getvalue())
    return probabilities
