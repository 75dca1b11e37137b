"""Member specs (``members/*.toml``) and pipeline recipes (``pipelines/*.toml``), validated.

Unknown keys and out-of-range values are errors that name the key, the file and the allowed
values. Every field has a one-line comment; the resolved spec is written next to each trained
member so a run always says exactly what it did.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ensemble.core.errors import ConfigError, did_you_mean
from ensemble.core.validation import check_choice, check_range, require
from ensemble.data.split import DEFAULT_FRACTIONS, check_fractions
from ensemble.members.backbones import available_backbones
from ensemble.members.inputs import AugmentationConfig

MEMBER_KINDS = ("cnn", "ovr")


@dataclass(frozen=True)
class HeadSpec:
    """The classifier on top of the pooled features (the report: one dense layer, dropout 0.3)."""

    dense_units: int = 256  # width of the hidden dense layer; 0 = straight to the softmax
    dropout: float = 0.3  # dropout before the softmax (and before the dense layer)
    batch_norm: bool = False  # batch norm after the dense layer

    def __post_init__(self) -> None:
        check_range(self, "dense_units", 0)
        check_range(self, "dropout", 0, 1, high_open=True)


@dataclass(frozen=True)
class ScheduleSpec:
    """From-scratch schedule (``weights = "none"``): linear warm-up then cosine decay."""

    epochs: int = 20  # maximum epochs
    learning_rate: float = 2e-3  # peak learning rate after warm-up
    warmup_epochs: float = 1.0  # linear warm-up length
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    bn_momentum: float = 0.9  # batch-norm moving-average momentum (Keras default 0.99 is too slow
    #                           for a few thousand steps: evaluation statistics would lag)

    def __post_init__(self) -> None:
        check_range(self, "epochs", 1)
        check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "warmup_epochs", 0, self.epochs, high_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "label_smoothing", 0, 1, high_open=True)
        check_range(self, "bn_momentum", 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class FinetuneSpec:
    """Pretrained schedule: phase 1 head only, phase 2 unfrozen backbone at a low rate."""

    head_epochs: int = 5  # phase 1: backbone frozen
    head_learning_rate: float = 1e-3  # phase 1 learning rate
    epochs: int = 10  # phase 2: backbone unfrozen
    learning_rate: float = 8e-5  # phase 2 learning rate (the report's best)
    unfreeze_from: str = ""  # first layer to unfreeze in phase 2; "" = the whole backbone

    def __post_init__(self) -> None:
        check_range(self, "head_epochs", 0)
        check_range(self, "epochs", 0)
        check_range(self, "head_learning_rate", 0, low_open=True)
        check_range(self, "learning_rate", 0, low_open=True)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when validation accuracy has not improved for ``patience`` epochs; pick the model."""

    patience: int = 6  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0  # smallest change that counts as an improvement
    keep: str = "best"  # the member's model: "best" epoch by val accuracy, or "last" (a robust
    #   fine-tuning stage keeps its last, most adapted epoch: clean val accuracy would pick the
    #   least adapted one)

    def __post_init__(self) -> None:
        check_range(self, "patience", 0)
        check_range(self, "min_delta", 0)
        check_choice(self, "keep", ("best", "last"))


@dataclass(frozen=True)
class OvrSpec:
    """One-vs-rest heads on a trained member's pooled features."""

    base_member: str = ""  # name of the trained CNN member whose features the heads use
    epochs: int = 30  # epochs per binary head
    learning_rate: float = 1e-3  # Adam learning rate of each head
    hidden_units: int = 0  # 0 = logistic regression on the features
    batch_size: int = 256  # batch size of each head's training

    def __post_init__(self) -> None:
        check_range(self, "epochs", 1)
        check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "hidden_units", 0)
        check_range(self, "batch_size", 1)


@dataclass(frozen=True)
class DistillSpec:
    """Teacher–student training (:mod:`.distillation`); no teachers = plain training."""

    teachers: tuple[str, ...] = ()  # earlier members of the pipeline (a name or a list) whose
    #   mean probabilities on the clean image the student learns; [] = labels only
    weight: float = 0.5  # share of the teachers' term in the loss (1 = teachers only)
    temperature: float = 1.0  # softens teacher and student alike; the term is scaled by T²
    teacher_tta: bool = False  # average each teacher over the 8 dihedral views of the image

    def __post_init__(self) -> None:
        teachers = (self.teachers,) if isinstance(self.teachers, str) else self.teachers
        is_names = isinstance(teachers, list | tuple) and all(
            isinstance(name, str) and name for name in teachers
        )
        require(is_names, "teachers", "a list of member names", teachers)
        object.__setattr__(self, "teachers", tuple(teachers))
        check_range(self, "weight", 0, 1)
        check_range(self, "temperature", 0, low_open=True)


@dataclass(frozen=True)
class MemberSpec:
    """Everything needed to train one ensemble member; see ``members/*.toml``."""

    name: str  # unique member name; labels votes and features (defaults to the file name)
    kind: str = "cnn"  # "cnn" (a backbone + head) or "ovr" (one-vs-rest heads)
    backbone: str = "mobilenetv2"  # a registered backbone (ensemble.members.backbones)
    input_size: int = 64  # images are resized to input_size × input_size
    weights: str = "none"  # "imagenet" | "none" | path to a weights file
    batch_size: int = 64  # training batch size
    class_weights: str = "balanced"  # "balanced" | "none"
    seed: int = 0  # initialisation, shuffling and augmentation seed
    init_from: str = ""  # start from trained weights: an earlier member of the pipeline (its
    #   name) or a .keras file of the same architecture; "" = the `weights` setting
    combine: bool = True  # false: a stage other members start from, left out of the combiners
    num_cpus: float | None = None  # CPUs of this member's Ray task (train-members --ray);
    #   unset = the command line's --num-cpus, else 1
    num_gpus: float | None = None  # GPUs of this member's Ray task; unset = --num-gpus, else 0
    head: HeadSpec = field(default_factory=HeadSpec)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    ovr: OvrSpec = field(default_factory=OvrSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)

    def __post_init__(self) -> None:
        check_choice(self, "kind", MEMBER_KINDS)
        check_choice(self, "backbone", available_backbones())
        check_range(self, "input_size", 32)
        check_range(self, "batch_size", 1)
        check_choice(self, "class_weights", ("balanced", "none"))
        require(
            not (self.init_from and self.pretrained),
            "weights",
            "'none' when init_from is set (init_from already gives every weight)",
            self.weights,
        )
        if self.kind == "ovr":
            require(bool(self.ovr.base_member), "ovr.base_member", "a member name", "")
        require(
            not (self.distill.teachers and self.pretrained),
            "weights",
            "'none' for a student (distill.teachers set); start it with init_from instead",
            self.weights,
        )
        for key, low_open in (("num_cpus", True), ("num_gpus", False)):
            value = getattr(self, key)
            if value is not None:
                is_number = isinstance(value, int | float) and not isinstance(value, bool)
                require(is_number, key, "a number", value)
                check_range(self, key, 0, low_open=low_open)

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from ImageNet or a weights file (two-phase fine-tuning).

        A member with ``init_from`` is not: it starts from a whole trained member of this
        tool, head included, and follows the one-phase ``[schedule]``.
        """
        return self.weights != "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (as written to ``spec.json`` beside a trained member)."""
        return asdict(self)


@dataclass(frozen=True)
class FitSpec:
    """How ``fit-stacker`` fits this pipeline's run when its command line does not say.

    Recorded in the run's manifest by ``train-members``; a command-line option overrides it.
    """

    members: tuple[str, ...] = ()  # members to combine (may name a pre-training stage as a
    #   clean expert); [] = those with combine = true
    tta: bool = False  # fit (and then predict and report) on 8-view test-time augmentation
    shift_copies: int = 0  # seeded shifted copies of blend the combiners also learn from
    accepted_accuracy: float = 0.0  # the selective rule's default target; 0 = the package's
    delta: float = 0.0  # chance a selective guarantee fails; 0 = the package's default

    def __post_init__(self) -> None:
        members = self.members
        is_names = isinstance(members, list | tuple) and all(
            isinstance(name, str) and name for name in members
        )
        require(is_names, "members", "a list of member names", members)
        object.__setattr__(self, "members", tuple(members))
        check_range(self, "shift_copies", 0)
        check_range(self, "accepted_accuracy", 0, 1, high_open=True)
        check_range(self, "delta", 0, 1, high_open=True)

    def options(self) -> dict[str, Any]:
        """The settings as ``fit_combiners`` keyword arguments (unset ones left out)."""
        options: dict[str, Any] = {"tta": self.tta, "shift_copies": self.shift_copies}
        if self.members:
            options["members"] = list(self.members)
        if self.accepted_accuracy:
            options["accepted_accuracy"] = self.accepted_accuracy
        if self.delta:
            options["delta"] = self.delta
        return options


@dataclass(frozen=True)
class PipelineSpec:
    """An end-to-end recipe: which members, how to clean and split the data."""

    name: str  # recipe name
    members: tuple[MemberSpec, ...]  # member specs in training order
    clean: bool = True  # leave the audit's flagged images out of every split
    split_seed: int = 0  # seed of the train/val/blend/test split
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    fit: FitSpec = field(default_factory=FitSpec)  # fit-stacker's settings for the run


_SECTIONS = {
    "head": HeadSpec,
    "augmentation": AugmentationConfig,
    "schedule": ScheduleSpec,
    "finetune": FinetuneSpec,
    "early_stopping": EarlyStoppingSpec,
    "ovr": OvrSpec,
    "distill": DistillSpec,
}


def load_member_spec(path: Path | str) -> MemberSpec:
    """Read and validate a member spec TOML.

    Raises:
        ConfigError: unreadable TOML, an unknown key, or a bad value; the message names the
            file, the key, the allowed values and what was received.
    """
    path = Path(path)
    table = _read_toml(path)
    table.setdefault("name", path.stem)
    return member_spec_from_dict(table, source=str(path))


def member_spec_from_dict(table: dict[str, Any], source: str = "member spec") -> MemberSpec:
    """Validate a member spec given as a dict (the parsed TOML)."""
    table = dict(table)
    values: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        if section in table:
            content = table.pop(section)
            if not isinstance(content, dict):
                raise ConfigError(f"{source}: [{section}] must be a table")
            values[section] = _build(cls, content, source, section)
    top = {f.name for f in fields(MemberSpec)} - set(_SECTIONS)
    _reject_unknown(table, top, source)
    try:
        return MemberSpec(**_typed(MemberSpec, table, source), **values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_pipeline(path: Path | str) -> PipelineSpec:
    """Read a pipeline TOML and the member specs it lists.

    Member paths are relative to the pipeline file's folder, to a ``members/`` folder beside
    it, or to the built-in member specs (see :func:`_find_member`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    table = _read_toml(path)
    allowed = {"name", "members", "clean", "split_seed", "fractions", "fit"}
    _reject_unknown(table, allowed, str(path))
    member_paths = table.get("members")
    if not member_paths or not isinstance(member_paths, list):
        raise ConfigError(f"{path}: 'members' must be a non-empty list of member spec files")
    spec_paths = [_find_member(path, entry) for entry in member_paths]
    members = tuple(load_member_spec(spec_path) for spec_path in spec_paths)
    names = [member.name for member in members]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"{path}: member names must be unique. Repeated: {duplicated}")
    for member in members:
        if member.kind == "ovr" and member.ovr.base_member not in names:
            raise ConfigError(
                f"{path}: one-vs-rest member {member.name!r} needs base_member "
                f"{member.ovr.base_member!r} in the pipeline. Members: {names}"
            )
    members = tuple(
        _resolve_init_from(member, spec_path, names[:position], path)
        for position, (member, spec_path) in enumerate(zip(members, spec_paths, strict=True))
    )
    for position, member in enumerate(members):
        _check_teachers(member, names[:position], path)
    fractions = check_fractions(table.get("fractions", DEFAULT_FRACTIONS))
    fit = FitSpec()
    if "fit" in table:
        if not isinstance(table["fit"], dict):
            raise ConfigError(f"{path}: [fit] must be a table")
        fit = _build(FitSpec, table["fit"], str(path), "fit")
        unknown = [name for name in fit.members if name not in names]
        if unknown:
            raise ConfigError(
                f"{path}: [fit] members {unknown} are not members of the pipeline."
                f"{did_you_mean(unknown[0], names)} Members: {names}"
            )
    return PipelineSpec(
        name=str(table.get("name", path.stem)),
        members=members,
        clean=bool(table.get("clean", True)),
        split_seed=int(table.get("split_seed", 0)),
        fractions=fractions,
        fit=fit,
    )


def _resolve_init_from(
    member: MemberSpec, spec_path: Path, earlier: list[str], pipeline_path: Path
) -> MemberSpec:
    """Check ``init_from``: an earlier member's name, or a weights file (made absolute).

    A relative file path is taken from the member spec's folder, so a pipeline can be run from
    any working directory.
    """
    if not member.init_from or member.init_from in earlier:
        return member
    candidate = Path(member.init_from).expanduser()
    if not candidate.is_absolute():
        candidate = spec_path.parent / candidate
    if candidate.is_file():
        return replace(member, init_from=str(candidate.resolve()))
    raise ConfigError(
        f"{pipeline_path}: member {member.name!r} has init_from={member.init_from!r}, which is "
        f"neither a member listed before it ({earlier}) nor a weights file ({candidate} not "
        "found). List the member it starts from earlier in the pipeline, or give a .keras file."
    )


def _check_teachers(member: MemberSpec, earlier: list[str], pipeline_path: Path) -> None:
    """A student's teachers must be CNN members listed before it in the pipeline."""
    for teacher in member.distill.teachers:
        if teacher not in earlier:
            raise ConfigError(
                f"{pipeline_path}: member {member.name!r} has distill.teachers entry "
                f"{teacher!r}, which is not a member listed before it ({earlier}). List the "
                "teacher earlier in the pipeline."
            )


def _find_member(pipeline_path: Path, entry: str) -> Path:
    """A pipeline's member spec ``entry``, looked for in this order.

    1. beside the pipeline file (``PIPELINE_DIR/entry``);
    2. in a ``members/`` folder beside the pipeline's folder (``PIPELINE_DIR/../members/entry``,
       the repository's layout);
    3. among the built-in member specs (``ensemble.recipes``), so that a copy of a built-in
       pipeline works from any folder.
    """
    from ensemble.recipes import recipes_root

    candidates = [
        pipeline_path.parent / entry,
        pipeline_path.parent.parent / "members" / entry,
        recipes_root() / "members" / entry,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{pipeline_path}: member spec {entry!r} not found (looked in "
        f"{', '.join(str(c.parent) for c in candidates)})"
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def _reject_unknown(table: dict[str, Any], allowed: set[str], source: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}.{hint} Allowed keys: {sorted(allowed)}"
        )


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _typed(cls, table: dict[str, Any], source: str) -> dict[str, Any]:
    """Check each value's type against the dataclass field's default.

    Whole numbers are accepted where decimals are expected; booleans are refused where numbers
    are expected (TOML's ``true`` is not the number 1 here, whatever Python says).
    """
    annotations = {f.name: f.default for f in fields(cls)}
    result = {}
    for key, value in table.items():
        default = annotations.get(key)
        expected = type(default) if isinstance(default, (bool, int, float, str)) else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wrong_bool = isinstance(value, bool) and expected is not bool
        if expected is not None and (wrong_bool or not isinstance(value, expected)):
            raise ConfigError(
                f"{source}: {key} must be {_TYPE_NAMES[expected]}. Received: {key}={value!r}"
            )
        result[key] = value
    return result


def _build(cls, table: dict[str, Any], source: str, section: str):
    """One ``[section]`` table → its dataclass, errors naming the file and ``section.key``."""
    _reject_unknown(table, {f.name for f in fields(cls)}, f"{source} [{section}]")
    values = _typed(cls, table, f"{source} [{section}]")
    try:
        return cls(**values)
    except ConfigError as error:  # the section's own rules (__post_init__)
        raise ConfigError(f"{source}: {section}.{error}") from None
