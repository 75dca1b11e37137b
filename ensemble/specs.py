"""Member specs (``members/*.toml``) and pipeline recipes (``pipelines/*.toml``), validated.

Unknown keys and out-of-range values are errors that name the key, the file and the allowed
values. Every field has a one-line comment; the resolved spec is written next to each trained
member so a run always says exactly what it did.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ensemble.backbones import available_backbones
from ensemble.errors import ConfigError
from ensemble.inputs import AugmentationConfig
from ensemble.split import DEFAULT_FRACTIONS, check_fractions

MEMBER_KINDS = ("cnn", "ovr")


@dataclass(frozen=True)
class HeadSpec:
    """The classifier on top of the pooled features (the report: one dense layer, dropout 0.3)."""

    dense_units: int = 256  # width of the hidden dense layer; 0 = straight to the softmax
    dropout: float = 0.3  # dropout before the softmax (and before the dense layer)
    batch_norm: bool = False  # batch norm after the dense layer


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


@dataclass(frozen=True)
class FinetuneSpec:
    """Pretrained schedule: phase 1 head only, phase 2 unfrozen backbone at a low rate."""

    head_epochs: int = 5  # phase 1: backbone frozen
    head_learning_rate: float = 1e-3  # phase 1 learning rate
    epochs: int = 10  # phase 2: backbone unfrozen
    learning_rate: float = 8e-5  # phase 2 learning rate (the report's best)
    unfreeze_from: str = ""  # first layer to unfreeze in phase 2; "" = the whole backbone


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when validation accuracy has not improved for ``patience`` epochs."""

    patience: int = 6  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0  # smallest change that counts as an improvement


@dataclass(frozen=True)
class OvrSpec:
    """One-vs-rest heads on a trained member's pooled features."""

    base_member: str = ""  # name of the trained CNN member whose features the heads use
    epochs: int = 30  # epochs per binary head
    learning_rate: float = 1e-3  # Adam learning rate of each head
    hidden_units: int = 0  # 0 = logistic regression on the features
    batch_size: int = 256  # batch size of each head's training


@dataclass(frozen=True)
class MemberSpec:
    """Everything needed to train one ensemble member; see ``members/*.toml``."""

    name: str  # unique member name; labels votes and features (defaults to the file name)
    kind: str = "cnn"  # "cnn" (a backbone + head) or "ovr" (one-vs-rest heads)
    backbone: str = "mobilenetv2"  # a registered backbone (ensemble.backbones)
    input_size: int = 64  # images are resized to input_size × input_size
    weights: str = "none"  # "imagenet" | "none" | path to a weights file
    batch_size: int = 64  # training batch size
    class_weights: str = "balanced"  # "balanced" | "none"
    seed: int = 0  # initialisation, shuffling and augmentation seed
    head: HeadSpec = field(default_factory=HeadSpec)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    ovr: OvrSpec = field(default_factory=OvrSpec)

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from trained weights (two-phase fine-tuning)."""
        return self.weights != "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (as written to ``spec.json`` beside a trained member)."""
        return asdict(self)


@dataclass(frozen=True)
class PipelineSpec:
    """An end-to-end recipe: which members, how to clean and split the data."""

    name: str  # recipe name
    members: tuple[MemberSpec, ...]  # member specs in training order
    clean: bool = True  # leave the audit's flagged images out of every split
    split_seed: int = 0  # seed of the train/val/blend/test split
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))


_SECTIONS = {
    "head": HeadSpec,
    "augmentation": AugmentationConfig,
    "schedule": ScheduleSpec,
    "finetune": FinetuneSpec,
    "early_stopping": EarlyStoppingSpec,
    "ovr": OvrSpec,
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
            values[section] = _build(cls, content, f"{source} [{section}]")
    top = {f.name for f in fields(MemberSpec)} - set(_SECTIONS)
    _reject_unknown(table, top, source)
    spec = MemberSpec(**_typed(MemberSpec, table, source), **values)
    _validate_member(spec, source)
    return spec


def load_pipeline(path: Path | str) -> PipelineSpec:
    """Read a pipeline TOML and the member specs it lists.

    Member paths are relative to the pipeline file's folder or to the repository's ``members/``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    table = _read_toml(path)
    allowed = {"name", "members", "clean", "split_seed", "fractions"}
    _reject_unknown(table, allowed, str(path))
    member_paths = table.get("members")
    if not member_paths or not isinstance(member_paths, list):
        raise ConfigError(f"{path}: 'members' must be a non-empty list of member spec files")
    members = tuple(load_member_spec(_find_member(path, entry)) for entry in member_paths)
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
    fractions = check_fractions(table.get("fractions", DEFAULT_FRACTIONS))
    return PipelineSpec(
        name=str(table.get("name", path.stem)),
        members=members,
        clean=bool(table.get("clean", True)),
        split_seed=int(table.get("split_seed", 0)),
        fractions=fractions,
    )


def _find_member(pipeline_path: Path, entry: str) -> Path:
    candidates = [pipeline_path.parent / entry, pipeline_path.parent.parent / "members" / entry]
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
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}. Allowed keys: {sorted(allowed)}")


def _typed(cls, table: dict[str, Any], source: str) -> dict[str, Any]:
    """Check each value's type against the dataclass field's default (ints accepted as floats)."""
    defaults = {f.name: f.default for f in fields(cls)}
    result = {}
    for key, value in table.items():
        default = defaults.get(key)
        expected = type(default) if default is not None and not callable(default) else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and expected is not type(None) and not isinstance(value, expected):
            if not (key == "name" and isinstance(value, str)):
                raise ConfigError(
                    f"{source}: {key} must be a {expected.__name__}. Received: {key}={value!r}"
                )
        result[key] = value
    return result


def _build(cls, table: dict[str, Any], source: str):
    _reject_unknown(table, {f.name for f in fields(cls)}, source)
    values = _typed(cls, table, source)
    try:
        return cls(**values)
    except ConfigError as error:  # the section's own validation (e.g. AugmentationConfig)
        raise ConfigError(f"{source}: {error}") from None


def _check(condition: bool, source: str, key: str, rule: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{source}: {key} must be {rule}. Received: {key}={value!r}")


def _validate_member(spec: MemberSpec, source: str) -> None:
    _check(spec.kind in MEMBER_KINDS, source, "kind", f"one of {list(MEMBER_KINDS)}", spec.kind)
    _check(
        spec.backbone in available_backbones(),
        source,
        "backbone",
        f"one of {available_backbones()}",
        spec.backbone,
    )
    _check(spec.input_size >= 32, source, "input_size", ">= 32", spec.input_size)
    _check(spec.batch_size >= 1, source, "batch_size", ">= 1", spec.batch_size)
    _check(
        spec.class_weights in ("balanced", "none"),
        source,
        "class_weights",
        "'balanced' or 'none'",
        spec.class_weights,
    )
    _check(spec.head.dense_units >= 0, source, "head.dense_units", ">= 0", spec.head.dense_units)
    _check(0 <= spec.head.dropout < 1, source, "head.dropout", "in [0, 1)", spec.head.dropout)
    schedule = spec.schedule
    _check(schedule.epochs >= 1, source, "schedule.epochs", ">= 1", schedule.epochs)
    _check(
        schedule.learning_rate > 0,
        source,
        "schedule.learning_rate",
        "> 0",
        schedule.learning_rate,
    )
    _check(
        0 <= schedule.warmup_epochs < schedule.epochs,
        source,
        "schedule.warmup_epochs",
        "in [0, epochs)",
        schedule.warmup_epochs,
    )
    _check(
        schedule.weight_decay >= 0, source, "schedule.weight_decay", ">= 0", schedule.weight_decay
    )
    _check(
        0 <= schedule.label_smoothing < 1,
        source,
        "schedule.label_smoothing",
        "in [0, 1)",
        schedule.label_smoothing,
    )
    _check(
        0 < schedule.bn_momentum < 1,
        source,
        "schedule.bn_momentum",
        "in (0, 1)",
        schedule.bn_momentum,
    )
    tune = spec.finetune
    _check(tune.head_epochs >= 0, source, "finetune.head_epochs", ">= 0", tune.head_epochs)
    _check(tune.epochs >= 0, source, "finetune.epochs", ">= 0", tune.epochs)
    for key in ("head_learning_rate", "learning_rate"):
        value = getattr(tune, key)
        _check(value > 0, source, f"finetune.{key}", "> 0", value)
    stop = spec.early_stopping
    _check(stop.patience >= 0, source, "early_stopping.patience", ">= 0", stop.patience)
    if spec.kind == "ovr":
        _check(bool(spec.ovr.base_member), source, "ovr.base_member", "a member name", "")
        _check(spec.ovr.epochs >= 1, source, "ovr.epochs", ">= 1", spec.ovr.epochs)
        _check(
            spec.ovr.learning_rate > 0, source, "ovr.learning_rate", "> 0", spec.ovr.learning_rate
        )
