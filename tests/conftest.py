import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("ENSEMBLE_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """The real PBC images: $ENSEMBLE_DATA, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("ENSEMBLE_DATA"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "pbc96").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = shared_data()
    if root is None:
        pytest.skip(
            "real PBC images not found: set ENSEMBLE_DATA to the folder holding pbc96/ "
            "(CI has them at ../shared/data)"
        )
    return root


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    from ensemble.synthetic import write_folder

    return write_folder(tmp_path_factory.mktemp("synthetic") / "cells", per_class=12, size=48)


@dataclass(frozen=True)
class CliRun:
    """A command's run directory and what the command printed."""

    run: Path
    code: int
    out: str
    err: str


def _invoke(args) -> int:
    """Run the ensemble command in-process; returns its exit code."""
    from ensemble.cli import main

    saved = sys.argv
    sys.argv = ["ensemble", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved


def run_cli(args, capsys):
    """Run the ensemble command in-process; returns (exit code, stdout, stderr)."""
    code = _invoke(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_captured(args) -> tuple[int, str, str]:
    """:func:`run_cli` for session fixtures, where ``capsys`` is not available."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _invoke(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def trained_ci(synthetic_folder, tmp_path_factory) -> CliRun:
    """The ci pipeline trained once per session by ``ensemble train-members`` (do not modify)."""
    run = tmp_path_factory.mktemp("trained") / "ci"
    args = ["train-members", "--pipeline", REPO / "pipelines/ci.toml"]
    code, out, err = run_cli_captured([*args, "--data", synthetic_folder, "--run", run])
    assert code == 0, err
    return CliRun(run, code, out, err)


@pytest.fixture(scope="session")
def fitted_ci(trained_ci) -> CliRun:
    """The trained ci run with combiners fitted by ``ensemble fit-stacker`` (do not modify)."""
    code, out, err = run_cli_captured(["fit-stacker", "--run", trained_ci.run])
    assert code == 0, err
    return CliRun(trained_ci.run, code, out, err)


@pytest.fixture(scope="session")
def fitted_ci_run(fitted_ci) -> Path:
    """The run directory of :func:`fitted_ci` (shared: copy it before changing anything)."""
    return fitted_ci.run
