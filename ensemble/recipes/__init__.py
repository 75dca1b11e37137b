"""Built-in recipes: the pipelines (``pipelines/*.toml``) and member specs (``members/**/*.toml``).

The repository keeps them in its top-level ``pipelines/`` and ``members/`` folders. A wheel
ships the same files as package data of this package, as ``ensemble/recipes/pipelines/`` and
``ensemble/recipes/members/`` (``package-dir`` in ``pyproject.toml`` maps the two folders
there), so ``--pipeline demo`` works after ``pip install .`` as well as in a source checkout,
where (with an editable install) the files are read in place. Either way the two folders are
siblings, so a pipeline finds its member specs as in :func:`ensemble.members.specs.load_pipeline`.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from functools import cache
from importlib.resources import as_file, files
from pathlib import Path

from ensemble.core.errors import ConfigError

_extracted = ExitStack()  # keeps extracted copies (a zipped install) until the process ends
atexit.register(_extracted.close)


@cache
def recipes_root() -> Path:
    """The folder that holds the built-in ``pipelines/`` and ``members/`` folders."""
    packaged = files(__name__)
    if packaged.joinpath("pipelines").is_dir():  # an installed wheel
        return _extracted.enter_context(as_file(packaged))
    return Path(__file__).resolve().parents[2]  # a source checkout: the repository itself


def builtin_pipelines() -> list[str]:
    """Names of the built-in pipelines, sorted (``["an2dl", "ci", "demo", "pbc-cpu"]``)."""
    return sorted(path.stem for path in (recipes_root() / "pipelines").glob("*.toml"))


def resolve_pipeline(name_or_path: str | Path) -> Path:
    """The pipeline TOML file named by a path or by a built-in recipe's name.

    An existing file wins; otherwise a bare name (``"demo"`` or ``"demo.toml"``) names a
    built-in recipe.

    Args:
        name_or_path: a pipeline TOML file, or the name of a built-in pipeline.

    Returns:
        A path on the file system; its member specs resolve beside it as usual.

    Raises:
        ConfigError: neither a file nor a built-in name; the message lists the built-in names.

    Example:
        >>> resolve_pipeline("demo").name
        'demo.toml'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    names = builtin_pipelines()
    name = path.name.removesuffix(".toml")
    if path.parent == Path(".") and name in names:
        return recipes_root() / "pipelines" / f"{name}.toml"
    raise ConfigError(
        f"pipeline not found: give a pipeline TOML file or the name of a built-in pipeline "
        f"{names}. Received: pipeline={str(name_or_path)!r}"
    )


def resolve_member_spec(name_or_path: str | Path) -> Path:
    """A member spec TOML named by a path, or by its path among the built-in member specs.

    Example:
        >>> resolve_member_spec("distill/mobilenetv2-64-distilled.toml").name
        'mobilenetv2-64-distilled.toml'

    Raises:
        ConfigError: neither a file nor a built-in member spec.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = recipes_root() / "members" / path
    if builtin.is_file():
        return builtin
    raise ConfigError(
        f"member spec not found: give a TOML file or a built-in spec such as "
        f"'distill/mobilenetv2-64-distilled.toml'. Received: {str(name_or_path)!r}"
    )
