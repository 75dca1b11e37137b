"""The ``ensemble`` command. Thin: parse options, call the library, print.

Errors caused by input or configuration (:class:`ensemble.core.errors.EnsembleError`) are printed
as one line on stderr with exit code 2; ``--debug`` shows the traceback instead. TensorFlow's
start-up lines and the libraries' warnings stay hidden (:mod:`ensemble.core.console`) unless
``--verbose`` or ``--debug`` is given.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ensemble.core.console import quiet_console, set_verbose
from ensemble.core.errors import ConfigError, EnsembleError, did_you_mean
from ensemble.core.version import __version__
from ensemble.data.colour import METHODS as COLOUR_METHODS
from ensemble.data.split import SPLITS
from ensemble.recipes import builtin_pipelines
from ensemble.refer.conformal import DEFAULT_ALPHA, DEFAULT_SCORE, SCORES
from ensemble.refer.ood import DEFAULT_OOD_METHOD, DEFAULT_TARGET_REFERRAL, OOD_METHODS
from ensemble.refer.rule import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_CONFIDENCE, REFER_RULES
from ensemble.refer.selective import DEFAULT_DELTA, DEFAULT_TARGETS, SELECTIVE_SCORES
from ensemble.serve import adapt_settings

app = typer.Typer(
    name="ensemble",
    help="Blood-cell image classification with an ensemble of CNN members.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}

DataArgument = Annotated[
    Path | None,
    typer.Argument(
        metavar="DATA",
        help="The same as --data (kept for scripts written before --data).",
        show_default=False,
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Labelled images: a class folder DIR/<class>/<image>, an .npz (images, labels) or "
        "a path,label CSV.",
        show_default=False,
    ),
]
ClassesOption = Annotated[
    str | None,
    typer.Option("--classes", help="Comma-separated class names (for .npz integer labels)."),
]
DataRootOption = Annotated[
    Path | None,
    typer.Option("--data-root", help="Folder that a CSV manifest's relative paths start from."),
]
PipelineOption = Annotated[
    str,
    typer.Option(
        metavar="NAME|FILE",
        help=f"A built-in pipeline ({', '.join(builtin_pipelines())}) or a pipeline TOML file.",
    ),
]


#: A split of a run's data (see ensemble.data.split).
SplitName = StrEnum("SplitName", {name: name for name in SPLITS})


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"blood-ensemble {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors (and what --verbose shows).")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Show TensorFlow's start-up lines, retracing warnings and library warnings.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Blood-cell image classification with an ensemble of CNN members."""
    _state["debug"] = debug
    set_verbose(verbose or debug)  # Ensemble.load keeps TensorFlow's lines then
    if not (verbose or debug):
        quiet_console()  # before any command imports TensorFlow


def _names(values: list[str] | None) -> list[str]:
    """Names given as ``--opt a,b`` or ``--opt a --opt b``, in order, blanks dropped."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


@app.command()
def audit(
    data_argument: DataArgument = None,
    data: DataOption = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full report as JSON here.")
    ] = None,
    write_clean: Annotated[
        Path | None,
        typer.Option("--write-clean", help="Write a path,label CSV without the flagged images."),
    ] = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Audit the built-in synthetic data set.")
    ] = False,
    near_duplicate: Annotated[
        float, typer.Option(help="Min thumbnail correlation of a near duplicate (0-1].")
    ] = 0.93,
    colour_cast: Annotated[
        float, typer.Option(help="Max background chromaticity distance from the median.")
    ] = 0.07,
    non_cell: Annotated[
        float, typer.Option(help="Max robust z-score before an image counts as non-cell.")
    ] = 12.0,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
    limit: Annotated[int, typer.Option(min=0, help="Findings shown per kind.")] = 5,
) -> None:
    """Find unreadable files, duplicates, label conflicts, non-cell images and colour casts."""
    data = _one_data(data, data_argument)
    from ensemble.data.audit import AuditThresholds, run_audit

    thresholds = AuditThresholds(near_duplicate, colour_cast, non_cell)
    with tempfile.TemporaryDirectory() as scratch:
        if synthetic:
            from ensemble.data.synthetic import write_folder

            data = write_folder(Path(scratch) / "synthetic", per_class=30, size=96)
            typer.echo(f"built-in synthetic data set: 240 images in {data}", err=True)
        dataset = _load(data, classes, data_root)
        report = run_audit(dataset, thresholds)
        typer.echo(report.summary(limit))
        if json_out:
            from ensemble.core.fileio import atomic_write_text

            atomic_write_text(json_out, report.to_json())
            typer.echo(f"report written to {json_out}")
        if write_clean:
            kept = report.write_clean_manifest(write_clean)
            typer.echo(
                f"clean manifest ({kept} images, paths relative to {dataset.root}) "
                f"written to {write_clean}"
            )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "demo-output"
    ),
    per_class: Annotated[
        int, typer.Option(min=12, help="Synthetic images per class (every split needs some).")
    ] = 50,
    pipeline: PipelineOption = "demo",
) -> None:
    """Run the whole flow on built-in synthetic cells: data, members, combiners, predict, report."""
    from ensemble.demo import run_demo, summarize

    paths = run_demo(out, per_class=per_class, pipeline=pipeline)
    typer.echo(summarize(json.loads(paths["metrics"].read_text()), paths))


@app.command()
def split(
    data_argument: DataArgument = None,
    data: DataOption = None,
    out: Annotated[Path, typer.Option("--out", help="The split file to write.")] = Path(
        "split.json"
    ),
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    fractions: Annotated[
        str, typer.Option(help="train,val,blend,test fractions, summing to 1.")
    ] = "0.70,0.10,0.10,0.10",
    clean: Annotated[
        bool, typer.Option(help="Leave the audit's flagged images out of every split.")
    ] = True,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Make a leak-free stratified train/val/blend/test split (duplicate groups kept together)."""
    from ensemble.data.audit import run_audit
    from ensemble.data.split import SPLITS, check_fractions, make_split, save_split

    shares = check_fractions(dict(zip(SPLITS, _parse_fractions(fractions), strict=True)))
    dataset = _load(_one_data(data, data_argument), classes, data_root)
    report = run_audit(dataset)
    excluded = sorted(report.excluded_ids()) if clean else []
    result = make_split(dataset, report.groups, shares, seed, excluded)
    save_split(result, dataset, out)
    counts = ", ".join(f"{name} {len(result.ids(name))}" for name in SPLITS)
    typer.echo(f"split written to {out}: {counts}, excluded {len(excluded)}")


class Strategy(StrEnum):
    """How a member is trained."""

    default = "default"
    mirrored = "mirrored"


#: ``ensemble train-members --help``.
_TRAIN_MEMBERS_HELP = (
    "Split the data (once, saved) and train each member; resumable after any interruption."
)


@app.command("train-members", help=_TRAIN_MEMBERS_HELP)
def train_members(
    pipeline: PipelineOption,
    data: Annotated[Path, typer.Option(help="Class folder, .npz or CSV manifest.")],
    run: Annotated[
        Path | None,
        typer.Option(help="Run directory (default: runs/<pipeline name>).", show_default=False),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--members",
            "--only",
            metavar="NAMES",
            help="Train only these members: --members a,b or --members a --members b "
            "(--only is the same). Default: every member of the pipeline.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain members that already exist.")
    ] = False,
    strategy: Annotated[
        Strategy, typer.Option(help="'mirrored' trains under tf.distribute.MirroredStrategy.")
    ] = Strategy.default,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="local|auto|ADDRESS",
            help="Train each member as a Ray task: 'local' starts a cluster here, 'auto' joins "
            "this node's cluster, or a cluster ADDRESS. The run directory must be on storage "
            "every node mounts at the same path. Needs pip install 'blood-ensemble[ray]'.",
        ),
    ] = None,
    num_cpus: Annotated[
        float | None,
        typer.Option(min=0.01, help="With --ray: CPUs per member task (default 1, or the spec's)."),
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option(min=0, help="With --ray: GPUs per member task (default 0, or the spec's)."),
    ] = None,
) -> None:
    """Run ``ensemble train-members`` (its help: :data:`_TRAIN_MEMBERS_HELP`).

    Over 60 lines: one parameter per command-line option (Typer reads the options from the
    signature); the training is in :mod:`ensemble.run.train`.

    """
    from ensemble.members.specs import load_pipeline
    from ensemble.recipes import resolve_pipeline
    from ensemble.run.train import train_pipeline_members

    recipe = load_pipeline(resolve_pipeline(pipeline))
    dataset = _load(data, classes, data_root)
    run_dir = run or Path("runs") / recipe.name
    names = _names(only)
    if ray_address is None and (num_cpus is not None or num_gpus is not None):
        raise typer.BadParameter("--num-cpus and --num-gpus apply with --ray only")
    if ray_address is not None:
        if strategy is not Strategy.default:
            raise typer.BadParameter("--strategy mirrored trains on one machine; drop --ray")
        from ensemble.run.ray_train import summary, train_members_on_ray

        ray_results = train_members_on_ray(
            recipe,
            dataset,
            run_dir,
            address=ray_address,
            only=names or None,
            force=force,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        typer.echo(summary(ray_results))
        results = {name: result.metrics for name, result in ray_results.items()}
    else:
        results = train_pipeline_members(
            recipe, dataset, run_dir, only=names or None, force=force, strategy=strategy.value
        )
    for name, metrics in results.items():
        typer.echo(
            f"{name}: val accuracy {metrics['val_accuracy']:.4f}, macro-F1 "
            f"{metrics['val_macro_f1']:.4f}, {metrics['train_seconds'] / 60:.1f} min, "
            f"{metrics['images_per_second']:.0f} img/s"
        )
    typer.echo(f"run directory: {run_dir}")


#: Conformity score of the prediction sets (see ensemble.refer.conformal).
ConformalScore = StrEnum("ConformalScore", {name: name for name in SCORES})


#: Out-of-distribution score (see ensemble.refer.ood); ``none`` fits no detector.
OodMethod = StrEnum("OodMethod", {name: name for name in (*OOD_METHODS, "none")})


#: What the selective rule thresholds (see ensemble.refer.selective).
SelectiveScore = StrEnum("SelectiveScore", {name: name for name in SELECTIVE_SCORES})

_DEFAULT_CONFORMAL_SCORE = ConformalScore(DEFAULT_SCORE)
_DEFAULT_OOD = OodMethod(DEFAULT_OOD_METHOD)
_DEFAULT_SELECTIVE_SCORE = SelectiveScore(SELECTIVE_SCORES[0])

#: The review page's order (see ensemble.serve.gallery).
ReviewOrder = StrEnum("ReviewOrder", {"referral": "referral", "labelling": "labelling"})
_DEFAULT_REVIEW_ORDER = ReviewOrder("referral")

#: What ``abstain`` follows (see ensemble.refer.rule).
ReferRule = StrEnum("ReferRule", {name: name for name in REFER_RULES})


#: ``ensemble fit-stacker --help``.
_FIT_STACKER_HELP = (
    "Fit temperatures, combiners and the XGBoost stacker on blend; calibrate the referral.\n\n"
    "The combiners are fitted on one half of blend (and, with --shift-copies, shifted copies "
    "of it) and the conformal prediction sets calibrated on the other, clean half; the OOD "
    "detector is fitted on val and calibrated on blend."
)


@app.command()
def distill(
    run: Annotated[Path, typer.Option(help="A fitted run: its ensemble is the teacher.")],
    out: Annotated[Path, typer.Option(help="The student's new run directory.")],
    spec: Annotated[
        str,
        typer.Option(
            metavar="FILE|NAME",
            help="The student's member spec: a TOML file, or a built-in one "
            "(distill/mobilenetv2-64-distilled.toml).",
        ),
    ] = "distill/mobilenetv2-64-distilled.toml",
    teacher_tta: Annotated[
        bool | None,
        typer.Option(
            "--teacher-tta/--no-teacher-tta",
            help="The ensemble over the 8 dihedral views (default: as its combiners were fitted).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The run's data (default: the path in its manifest).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Train the student again.")] = False,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Train one fast student on the whole fitted ensemble; save it as a run of its own."""
    from ensemble.members.specs import load_member_spec
    from ensemble.recipes import resolve_member_spec
    from ensemble.run.directory import RunDir
    from ensemble.serve.distill import distill as distill_run

    student = load_member_spec(resolve_member_spec(spec))
    dataset = _load(RunDir.open(run).data_source(data), classes, data_root)
    metrics = distill_run(run, out, student, dataset=dataset, teacher_tta=teacher_tta, force=force)
    typer.echo(
        f"{student.name}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"{metrics['train_seconds'] / 60:.1f} min; run {out} (predict, report: --run {out})"
    )


@app.command()
def adapt(
    run: Annotated[Path, typer.Option(help="The fitted base run (only read).")],
    out: Annotated[Path, typer.Option(help="The adapted run's new directory.")],
    labelled: Annotated[
        Path | None,
        typer.Option(
            help="The lab's reviewed cells: a path,label CSV (e.g. the review page's "
            "corrections.csv); labels among the run's classes. Fine-tunes the members."
        ),
    ] = None,
    unlabelled: Annotated[
        Path | None,
        typer.Option(
            help="A folder of the lab's images, no labels: for --colour and --batchnorm alone, "
            "or, with --labelled, more images for the colour map's statistics."
        ),
    ] = None,
    colour: Annotated[
        str | None,
        typer.Option(
            help=f"Map the lab's colour onto the training images' ({', '.join(COLOUR_METHODS)}); "
            "with --labelled, before fine-tuning."
        ),
    ] = None,
    batchnorm: Annotated[
        bool,
        typer.Option(
            "--batchnorm",
            help="Re-estimate the members' batch-norm statistics on --unlabelled (without "
            "--labelled: fine-tuning re-estimates them itself).",
        ),
    ] = False,
    data_root: DataRootOption = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Fine-tuning epochs per member [default: {adapt_settings.DEFAULT_EPOCHS}; "
            "with --labelled].",
            show_default=False,
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            help="Fine-tuning learning rate [default: "
            f"{adapt_settings.DEFAULT_LEARNING_RATE}; with --labelled].",
            show_default=False,
        ),
    ] = None,
    replay: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Base training images mixed in per lab training image [default: "
            f"{adapt_settings.DEFAULT_REPLAY}; with --labelled].",
            show_default=False,
        ),
    ] = None,
    calibration_replay: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Base blend images calibrated on beside the lab's held-out cells (0: the "
            f"lab's cells alone) [default: {adapt_settings.DEFAULT_CALIBRATION_REPLAY}; with "
            "--labelled].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the lab's split and the replay.")] = 0,
) -> None:
    """Make a fitted run work in a lab: fine-tune on its reviewed cells, map its images, or both."""
    if labelled is None and unlabelled is None:
        raise ConfigError(
            "adapt needs the lab's cells: --labelled reviewed.csv (fine-tune), or --unlabelled "
            "DIR with --colour reinhard and/or --batchnorm"
        )
    fine_tuning = {
        "--epochs": epochs,
        "--learning-rate": learning_rate,
        "--replay": replay,
        "--calibration-replay": calibration_replay,
    }
    if labelled is None:
        if data_root is not None:
            raise ConfigError(
                "--data-root is the folder the --labelled CSV's relative paths start from; "
                "without --labelled there is no CSV. Add --labelled reviewed.csv, or leave "
                "--data-root out."
            )
        given = [option for option, value in fine_tuning.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} set{'s' if len(given) == 1 else ''} how reviewed cells are "
                "fine-tuned on; without --labelled nothing is fine-tuned. Add --labelled "
                "reviewed.csv, or leave "
                f"{'it' if len(given) == 1 else 'them'} out."
            )
        from ensemble.serve.adapt_unlabelled import adapt_unlabelled

        done = adapt_unlabelled(run, unlabelled, out, colour=colour, batchnorm=batchnorm, seed=seed)
        steps = [f"colour ({colour})"] * bool(colour) + ["batch-norm statistics"] * batchnorm
        typer.echo(f"{' and '.join(steps)} from {done['images']} lab images")
        typer.echo(f"adapted run: {out} (predict, report: --run {out})")
        return
    if batchnorm:
        raise ConfigError(
            "--batchnorm re-estimates batch-norm statistics without labels; with --labelled "
            "cells the fine-tuning re-estimates them on the lab's cells itself. Leave "
            "--batchnorm out (--colour reinhard does combine with --labelled)."
        )
    from ensemble.serve.adapt import adapt as adapt_run

    results = adapt_run(
        run,
        labelled,
        out,
        data_root=data_root,
        colour=colour,
        unlabelled=unlabelled,
        epochs=adapt_settings.DEFAULT_EPOCHS if epochs is None else epochs,
        learning_rate=(
            adapt_settings.DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
        ),
        replay=adapt_settings.DEFAULT_REPLAY if replay is None else replay,
        calibration_replay=(
            adapt_settings.DEFAULT_CALIBRATION_REPLAY
            if calibration_replay is None
            else calibration_replay
        ),
        seed=seed,
    )
    for name, metrics in results.items():
        typer.echo(f"{name}: val accuracy on the lab's cells {metrics['val_accuracy']:.4f}")
    typer.echo(f"adapted run: {out} (predict, report: --run {out})")


@app.command("fit-stacker", help=_FIT_STACKER_HELP)
def fit_stacker(
    run: Annotated[Path, typer.Option(help="Run directory made by train-members.")],
    data: Annotated[
        Path | None, typer.Option(help="The run's data (default: the path in its manifest).")
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seed of the blend halves, the cross-validation folds and XGBoost."),
    ] = 0,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Fit on member outputs averaged over the 8 dihedral views (then predict and "
            "report with --tta too). Default: the pipeline's [fit] table, else no.",
            show_default=False,
        ),
    ] = None,
    score: Annotated[
        ConformalScore, typer.Option(help="Conformity score of the prediction sets.")
    ] = _DEFAULT_CONFORMAL_SCORE,
    mondrian: Annotated[
        bool,
        typer.Option(help="One threshold per class: coverage per class, larger sets."),
    ] = False,
    alpha: Annotated[
        float,
        typer.Option(
            help="Default miss rate of the prediction sets (predict --alpha overrides it).",
        ),
    ] = DEFAULT_ALPHA,
    ood: Annotated[
        OodMethod, typer.Option(help="Out-of-distribution score of the referral.")
    ] = _DEFAULT_OOD,
    ood_referral: Annotated[
        float,
        typer.Option(
            help="Share of clean images the OOD threshold refers.",
        ),
    ] = DEFAULT_TARGET_REFERRAL,
    accepted_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Accuracy on accepted images that --refer selective guarantees by default "
            f"(calibrated with {', '.join(map(str, DEFAULT_TARGETS))} beside it; default: "
            f"{DEFAULT_TARGETS[0]}).",
        ),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            help=f"Chance that a selective guarantee fails (default: the pipeline's [fit] "
            f"table, else {DEFAULT_DELTA}).",
            show_default=False,
        ),
    ] = None,
    selective_score: Annotated[
        SelectiveScore,
        typer.Option(help="What the selective rule thresholds."),
    ] = _DEFAULT_SELECTIVE_SCORE,
    per_class: Annotated[
        bool,
        typer.Option(
            "--per-class",
            help="One selective threshold per predicted class, each with its own guarantee "
            "(rare classes such as basophils).",
        ),
    ] = False,
    shift_copies: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Also fit the combiners on this many seeded shifted copies (stain, focus, "
            "JPEG, noise, exposure, rotation, hue, zoom) of their half of blend, so they learn "
            "which member to trust on such images. Default: the pipeline's [fit] table, else 0.",
            show_default=False,
        ),
    ] = None,
    members: Annotated[
        list[str] | None,
        typer.Option(
            "--members",
            metavar="NAMES",
            help="Combine these members (--members a,b or --members a --members b); default: "
            "the pipeline's [fit] members, else those with combine = true. May name a "
            "pre-training stage (combine = false) as a clean expert.",
        ),
    ] = None,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Run ``ensemble fit-stacker`` (its help: :data:`_FIT_STACKER_HELP`).

    Over 60 lines: one parameter per command-line option (Typer reads the options from the
    signature); the work is in :func:`ensemble.combine.fitting.fit_combiners`.

    """
    from ensemble.combine.fitting import fit_combiners

    opened = _open_run(run, data, classes, data_root)
    given = {
        "tta": tta,
        "shift_copies": shift_copies,
        "members": _names(members) or None,
        "accepted_accuracy": accepted_accuracy,
        "delta": delta,
    }
    settings = _fit_settings(opened.manifest.get("fit"), given)
    shift_copies = settings.get("shift_copies", 0)
    selection = fit_combiners(
        opened,
        seed=seed,
        score=score.value,
        mondrian=mondrian,
        alpha=alpha,
        ood_method=None if ood is OodMethod.none else ood.value,
        ood_referral=ood_referral,
        selective_score=selective_score.value,
        per_class=per_class,
        **settings,
    )
    scored_on = f" (clean + {shift_copies} shifted copies)" if shift_copies else ""
    for name, accuracy in selection.cv_accuracy_on_blend.items():
        typer.echo(f"{name:<20} cross-validated blend accuracy{scored_on} {accuracy:.4f}")
    calibration = selection.calibration
    for note in calibration["warnings"]:
        typer.echo(f"warning: {note}", err=True)
    conformal = calibration["conformal"]
    typer.echo(
        f"prediction sets: {conformal['score']}{' Mondrian' if conformal['mondrian'] else ''}, "
        f"alpha {conformal['alpha']}, calibrated on {conformal['n_images']} blend images "
        f"(combiners fitted on the other {calibration['n_blend_fit']})"
    )
    if calibration["ood"]:
        detector = calibration["ood"]
        typer.echo(
            f"OOD referral: {detector['method']} fitted on {detector['n_fit']} val images, "
            f"threshold {detector['threshold']:.3f} refers {detector['target_referral']:.1%} "
            f"of {detector['n_calibration']} clean blend images"
        )
    _echo_selective(run, selection)
    chosen = calibration.get("default_refer")
    if chosen:
        conformal = chosen["conformal"]
        typer.echo(
            f"default referral rule: {chosen['rule']} (on val, selective refers "
            f"{chosen['selective']['referred']:.1%} with {chosen['selective']['accuracy']:.4f} "
            "accepted accuracy; conformal "
            + (
                f"needs {conformal['referred']:.1%} at alpha {conformal['alpha']:g})"
                if conformal
                else "does not reach it at any alpha tried)"
            )
        )
    typer.echo(f"default combiner: {selection.default_combiner} (written to {run}/combiners)")


def _fit_settings(recorded: dict | None, given: dict) -> dict:
    """fit-stacker's settings: the command line's, else the pipeline's ``[fit]`` table.

    Says on stderr which ones came from the pipeline.
    """
    from ensemble.members.specs import FitSpec

    pipeline = FitSpec(**recorded).options() if recorded else {}
    settings = {key: value for key, value in given.items() if value is not None}
    taken = {key: value for key, value in pipeline.items() if key not in settings}
    if taken:
        shown = ", ".join(f"{key} {value}" for key, value in taken.items())
        typer.echo(f"fit-stacker: from the pipeline's [fit] table: {shown}", err=True)
    return pipeline | settings


def _echo_selective(run: Path, selection) -> None:
    """One line per calibrated accepted accuracy of the default combiner."""
    from ensemble.refer.selective import SelectiveClassifier

    record = selection.calibration.get("selective")
    if not record:
        return
    default = selection.default_combiner
    selective = SelectiveClassifier.load(
        run / "combiners" / record["models"][default], selection.member_model_sha256
    )
    for target in selective.targets:
        calibration = selective.calibration_[target]
        if selective.per_class:
            accepted = sum(row["n_accepted"] for row in calibration)
            n = sum(row["n"] for row in calibration)
        else:
            accepted, n = calibration["n_accepted"], calibration["n"]
        typer.echo(
            f"selective ({default}): accepted accuracy >= {target} with probability "
            f"{1 - selective.delta:g}: accepts {accepted} of {n} calibration images "
            f"({1 - accepted / max(n, 1):.1%} referred)"
        )


#: ``ensemble predict --help``.
_PREDICT_HELP = (
    "Classify every image under FOLDER.\n\n"
    "Rows are written as they are made (memory stays flat however many files), in file order."
    " Exit code 0 when every file was predicted, 3 when some files could not be read (each "
    "has a row with the reason and a line on stderr), 2 for bad options or an unusable run."
)


@app.command(help=_PREDICT_HELP)
def predict(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="Folder of images (searched recursively).")
    ],
    run: Annotated[Path, typer.Option(help="Run directory with fitted combiners.")],
    combiner: Annotated[
        str | None,
        typer.Option(help="stack|hard|soft|weighted|greedy|ovr|<member>; default: best on blend."),
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over the 8 dihedral views.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file; '-' = standard output (default: predictions.csv, or "
            "predictions.json with --json; none with --html alone)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Write JSON (a header, then one object per file).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Miss rate of the prediction sets (default: the calibrated one, 0.01).",
        ),
    ] = None,
    refer: Annotated[
        ReferRule | None,
        typer.Option(
            help="What abstain follows: 'conformal' = refer unless the set is exactly the "
            "prediction and the image is not out of distribution (default once calibrated); "
            "'selective' = refer unless confident enough for --accepted-accuracy; "
            "'agreement' = --min-agreement / --min-confidence."
        ),
    ] = None,
    min_agreement: Annotated[
        float,
        typer.Option(help="--refer agreement: abstain (refer) below this member agreement."),
    ] = DEFAULT_MIN_AGREEMENT,
    min_confidence: Annotated[
        float, typer.Option(help="--refer agreement: abstain (refer) below this confidence.")
    ] = DEFAULT_MIN_CONFIDENCE,
    accepted_accuracy: Annotated[
        float | None,
        typer.Option(
            help="--refer selective: the accuracy guaranteed on accepted images, one that "
            "fit-stacker calibrated (default: the one it was asked for).",
        ),
    ] = None,
    review_order: Annotated[
        ReviewOrder,
        typer.Option(
            help="--html: 'referral' shows referred images first; 'labelling' the ones a label "
            "teaches most (uncertain, unfamiliar, classes in turn), for ensemble adapt."
        ),
    ] = _DEFAULT_REVIEW_ORDER,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Also write a review page here: every image as a card (referred first), a label "
            "picker, and a 'Download corrections' button (a path,label CSV for train-members)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="local|auto|ADDRESS",
            help="Predict on a Ray cluster (Ray Data, one actor per --num-cpus holding the "
            "ensemble): 'local' starts a cluster here, 'auto' joins this node's, or HOST:6379. "
            "The folder and run on storage every node mounts at the same path. Same rows, same "
            "order. Needs pip install 'blood-ensemble[ray]'.",
        ),
    ] = None,
    num_cpus: Annotated[
        float | None,
        typer.Option(min=0.01, help="With --ray: CPUs per actor (default 1)."),
    ] = None,
) -> None:
    """Run ``ensemble predict`` (its help: :data:`_PREDICT_HELP`).

    Over 60 lines: one parameter per command-line option (Typer reads the options from the
    signature); the rows are made in :mod:`ensemble.serve.predict`.

    """
    from ensemble.serve.predict import Predictions, iter_prediction_rows, prepare_prediction
    from ensemble.serve.prediction_files import STDOUT, RowTally, default_output, write_rows

    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1. Received: {batch_size}")
    if ray_address is None and num_cpus is not None:
        raise typer.BadParameter("--num-cpus applies with --ray only")
    if ray_address is not None:
        from ensemble.run.ray_train import require_ray

        require_ray()  # before anything is loaded
    job = prepare_prediction(
        folder,
        run,
        combiner=combiner,
        tta=tta,
        batch_size=batch_size,
        min_agreement=min_agreement,
        min_confidence=min_confidence,
        alpha=alpha,
        refer=refer.value if refer else None,
        accepted_accuracy=accepted_accuracy,
    )
    if ray_address is not None:
        from ensemble.serve.ray_predict import iter_prediction_rows_on_ray

        rows = iter_prediction_rows_on_ray(job, address=ray_address, num_cpus=num_cpus)
    else:
        rows = iter_prediction_rows(job)
    if html is not None and out is None and not json_output:  # the page only: no CSV unasked
        tally = RowTally(rows=[])
        for _ in tally.count(rows):
            pass
        where = str(html)
    else:
        out = default_output(out, json_output)
        tally = write_rows(
            rows,
            out,
            columns=job.columns(),
            header=job.header,
            as_json=json_output,
            keep_rows=html is not None,  # the review page needs them
        )
        where = "standard output" if str(out) == STDOUT else str(out)
    rate = tally.n_predicted / max(tally.seconds, 1e-9)
    typer.echo(
        f"{tally.n_predicted} predicted, {tally.n_skipped} skipped, {tally.seconds:.1f} s, "
        f"{rate:.0f} img/s → {where}",
        err=True,
    )
    if html:
        kept = Predictions(job.members, job.classes, job.header, tally.rows, tally.seconds)
        _write_review_page(kept, folder, run, html, review_order.value)
    if tally.n_skipped:
        raise typer.Exit(3)


#: ``ensemble report --help``.
_REPORT_HELP = (
    "Members and combiners on the same held-out images → report.md, report.html, "
    "leaderboard.csv.\n\n"
    "Metrics with intervals, McNemar's tests, clean vs shifted and zoomed copies, plots, and "
    "a review gallery of the images the best combiner got wrong or would refer (in "
    "report.html)."
)


@app.command(help=_REPORT_HELP)
def report(
    run: Annotated[Path, typer.Option(help="Run directory with fitted combiners.")],
    split: Annotated[
        SplitName, typer.Option(help="Split of the run's data to report on.")
    ] = SplitName.test,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (default: <run>/report, inside the run directory).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A labelled folder, .npz or .csv. The run's own data (moved is fine): report on "
            "--split of it. Any other labelled set: report on all of its images."
        ),
    ] = None,
    shifted: Annotated[
        bool,
        typer.Option(
            help="Also score a seeded shifted copy of the same images (the 7 acquisition shifts)."
        ),
    ] = True,
    zoomed: Annotated[
        bool, typer.Option(help="Also score a seeded copy of the same images, every one zoomed.")
    ] = True,
    shift_seed: Annotated[int, typer.Option(help="Seed of the shifted and zoomed copies.")] = 0,
    tta: Annotated[
        bool, typer.Option(help="Average each member over the 8 dihedral views of each image.")
    ] = False,
    classes: ClassesOption = None,
    data_root: DataRootOption = None,
    medmnistc: Annotated[
        bool | None,
        typer.Option(
            help="Also score a MedMNIST-C copy (a peer's corruption suite; the eval extra). "
            "Default: when it is installed.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run ``ensemble report`` (its help: :data:`_REPORT_HELP`).

    Over 60 lines: one parameter per command-line option (Typer reads the options from the
    signature); the report is built in :mod:`ensemble.report.build`.

    """
    from ensemble.report.build import report_on_dataset, report_on_split
    from ensemble.run.directory import RunDir

    directory = RunDir.open(run)
    dataset = _load(directory.data_source(data), classes, data_root)
    target = out or run / "report"
    options = {
        "shifted": shifted,
        "zoomed": zoomed,
        "shift_seed": shift_seed,
        "tta": tta,
        "medmnistc": _medmnistc_wanted(medmnistc),
    }
    if dataset.fingerprint() == directory.manifest["data_fingerprint"]:
        metrics = report_on_split(directory.with_data(dataset), split.value, target, **options)
    else:
        typer.echo(
            f"{dataset.root} is not the data of run {run}: scoring all of its "
            f"{len(dataset.records)} images (--split applies to the run's own data only)",
            err=True,
        )
        _warn_if_seen_in_training(run, dataset)
        metrics = report_on_dataset(run, dataset, target, **options)
    best = metrics["best_combiner"]
    typer.echo(
        f"best member {metrics['best_member']} accuracy "
        f"{metrics['models'][metrics['best_member']]['accuracy']:.4f}; best combiner {best} "
        f"accuracy {metrics['models'][best]['accuracy']:.4f} → {target}/report.md, "
        f"{target}/report.html"
    )


def _medmnistc_wanted(asked: bool | None) -> bool:
    """``--medmnistc``: on when it works here unless refused; asked for and broken is an error.

    The suite is started (and its kinds read) before any image is scored, so a package that is
    installed but cannot load (PyTorch, ImageMagick) is found at once, not after the clean pass.
    """
    from ensemble.corrupt.medmnistc import INSTALL_HINT, available, shared_suite

    if asked is False:
        return False
    problem = INSTALL_HINT
    if available():
        try:
            shared_suite().kinds()
            return True
        except (ImportError, OSError) as error:
            problem = f"MedMNIST-C is installed but cannot load: {error}"
    if asked:
        raise ConfigError(f"--medmnistc: {problem}")
    if problem != INSTALL_HINT:  # installed but broken: say so; not installed: nothing to say
        typer.echo(f"note: no MedMNIST-C copy ({problem})", err=True)
    return False


def _write_review_page(
    result, folder: Path, run: Path, html: Path, order: str = "referral"
) -> None:
    from ensemble.run.directory import RunDir
    from ensemble.serve.gallery import write_review_page

    classes = getattr(result, "classes", None) or RunDir.open(run).classes
    cards = write_review_page(
        result.rows,
        folder,
        html,
        classes,
        result.members,
        str(run),
        header=getattr(result, "header", None),
        order=order,
    )
    first = "for labelling" if order == "labelling" else "referred first"
    typer.echo(f"review page ({cards} images, {first}) → {html}", err=True)


def _warn_if_seen_in_training(run: Path, dataset) -> None:
    from ensemble.data.split import trained_on_hashes
    from ensemble.run.directory import RunDir

    seen = trained_on_hashes(RunDir.open(run).split_path)
    overlap = [record.id for record in dataset.records if record.content_hash in seen]
    if overlap:
        typer.echo(
            f"warning: {len(overlap)} images of {dataset.root} are byte-identical to images the "
            f"run trained or fitted on (first: {overlap[0]}); their scores are optimistic",
            err=True,
        )


def _open_run(run: Path, data: Path | None, classes: str | None, data_root: Path | None):
    from ensemble.run.directory import RunDir

    directory = RunDir.open(run)
    return directory.with_data(_load(directory.data_source(data), classes, data_root))


def _parse_fractions(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise typer.BadParameter(
            f"--fractions must be 4 numbers (train,val,blend,test). Received: {text!r}"
        )
    return values


def _one_data(option: Path | None, argument: Path | None) -> Path | None:
    """``--data``, or the DATA argument it replaces; both only when they name the same thing."""
    if option is not None and argument is not None and option != argument:
        raise typer.BadParameter(f"give the data once: --data {option} or {argument}, not both")
    return option if option is not None else argument


def _load(data: Path | None, classes: str | None, data_root: Path | None):
    from ensemble.data.sources import load_dataset

    if data is None:
        raise typer.BadParameter(
            "give --data: a class folder, .npz or .csv (or --synthetic where offered)"
        )
    names = [name.strip() for name in classes.split(",")] if classes else None
    return load_dataset(data, classes=names, root=data_root)


#: Options of the command itself, accepted before or after the subcommand.
GLOBAL_FLAGS = ("--debug", "--verbose")


def global_flags_first(arguments: list[str]) -> list[str]:
    """``arguments`` with :data:`GLOBAL_FLAGS` moved in front of the subcommand.

    ``ensemble predict DIR --run R --verbose`` then means ``ensemble --verbose predict …``;
    anything after a ``--`` is left alone.

    Example:
        >>> global_flags_first(["predict", "d", "--verbose"])
        ['--verbose', 'predict', 'd']
    """
    end = arguments.index("--") if "--" in arguments else len(arguments)
    flags = [argument for argument in arguments[:end] if argument in GLOBAL_FLAGS]
    rest = [argument for argument in arguments[:end] if argument not in GLOBAL_FLAGS]
    return flags + rest + arguments[end:]


def usage_message(error, arguments: list[str]) -> str:
    """A click usage error in the project's words: the option, what it needs, what it got.

    Typer checks option values with pydantic and words its errors for programmers ("Value
    error, …", "Input should be a valid number, unable to parse string as a number"); they
    become ``--alpha must be a number. Received: 'abc'``, with a close match for choices.
    """
    message = error.format_message().replace("\n", " ")
    param = getattr(error, "param", None)
    opts = [opt for opt in getattr(param, "opts", None) or [] if opt.startswith("--")]
    if not opts or type(error).__name__ != "BadParameter":
        return re.sub(r"^Invalid value: ", "", message)
    name, received = opts[0], _received(arguments, list(getattr(param, "opts", [])))
    detail = re.sub(r"^Value error, ", "", error.message if hasattr(error, "message") else message)
    choices = re.search(r"is not one of (.*?)\.?$", detail)
    if choices:
        names = re.findall(r"'([^']*)'", choices.group(1))
        return f"{name} must be one of {', '.join(names)}. Received: {received!r}." + did_you_mean(
            received, names
        )
    for pattern, wanted in _PYDANTIC_WORDS:
        found = re.search(pattern, detail)
        if found:
            return f"{name} must be {wanted.format(*found.groups())}. Received: {received!r}"
    return f"{name}: {detail} Received: {received!r}"


#: Pydantic's phrases for a bad option value → what the value must be.
_PYDANTIC_WORDS = (
    (r"valid integer", "a whole number"),
    (r"valid number", "a number"),
    (r"greater than or equal to (\S+)", "at least {}"),
    (r"greater than (\S+)", "more than {}"),
    (r"less than or equal to (\S+)", "at most {}"),
    (r"less than (\S+)", "less than {}"),
    (r"valid boolean", "true or false"),
)


def _received(arguments: list[str], opts: list[str]) -> str:
    """The value given to an option on the command line (the last one, as click takes it)."""
    value = ""
    for index, argument in enumerate(arguments):
        for opt in opts:
            if argument == opt and index + 1 < len(arguments):
                value = arguments[index + 1]
            elif argument.startswith(opt + "="):
                value = argument[len(opt) + 1 :]
    return value


def main() -> None:
    """Entry point of the ``ensemble`` console script."""
    arguments = global_flags_first(sys.argv[1:])
    if not arguments:  # `ensemble` alone: the help, as for --help
        arguments = ["--help"]
    try:
        # Without standalone mode, click returns typer.Exit's code instead of exiting.
        code = app(args=arguments, prog_name="ensemble", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except EnsembleError as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except OSError as error:
        # Disk full, permission denied, a vanished file: one line naming the file. Writes are
        # atomic, so the previous version of whatever was being written is still intact.
        if _state["debug"]:
            raise
        where = f" ({error.filename})" if error.filename else ""
        typer.echo(
            f"error: {error.strerror or error}{where}. Files written before are intact; fix "
            "the cause and run the command again (--debug shows the traceback).",
            err=True,
        )
        sys.exit(1)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:
        # Usage errors (typer.BadParameter, unknown options) arrive here in non-standalone
        # mode; typer bundles its own click, so they are recognised by their interface.
        exit_code = getattr(error, "exit_code", None)
        if not isinstance(exit_code, int) or not hasattr(error, "format_message"):
            raise
        if _state["debug"] or "--debug" in arguments:
            raise
        typer.echo(f"error: {usage_message(error, arguments)}", err=True)
        sys.exit(exit_code)
