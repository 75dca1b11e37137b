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
    from ensemble.data.synthetic import write_folder

    return write_folder(tmp_path_factory.mktemp("synthetic") / "cells", per_class=12, size=48)


@pytest.fixture()
def messy_folder(synthetic_folder, tmp_path):
    """Images that decode (nested, grey, RGBA, JPEG, odd names), unreadable files, a folder
    link loop and OS clutter: 5 images and 3 unreadable files for ``predict``."""
    import shutil

    import numpy as np
    from PIL import Image

    folder = tmp_path / "incoming"
    (folder / "nested").mkdir(parents=True)
    source = (
        synthetic_folder
        / "lymphocyte"
        / sorted(p.name for p in (synthetic_folder / "lymphocyte").iterdir())[0]
    )
    shutil.copy(source, folder / "good.png")
    pixels = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(pixels).convert("L").save(folder / "nested" / "gray.png")
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.tile(pixels, (4, 4, 1))).save(folder / "big.jpg", quality=90)  # not 32 px
    (folder / "zero.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.tile(pixels, (3, 3, 1))).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (folder / "text.jpg").write_text("I am not an image")
    shutil.copy(source, folder / "nested" / "café cell №1.png")  # spaces and non-ASCII
    (folder / "nested" / "loop").symlink_to(folder)  # a symlink loop
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # OS clutter: not an image, ignored
    return folder


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
