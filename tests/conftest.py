import os
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


def run_cli(args, capsys):
    """Run the ensemble command in-process; returns (exit code, stdout, stderr)."""
    import sys

    from ensemble.cli import main

    saved = sys.argv
    sys.argv = ["ensemble", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def fitted_ci_run(synthetic_folder, tmp_path_factory):
    """The ci pipeline trained on synthetic images, combiners fitted (shared: do not modify)."""
    from ensemble.data import load_dataset
    from ensemble.fitting import fit_combiners
    from ensemble.members import train_pipeline_members
    from ensemble.run import open_run
    from ensemble.specs import load_pipeline

    run = tmp_path_factory.mktemp("fitted") / "ci"
    dataset = load_dataset(synthetic_folder)
    train_pipeline_members(load_pipeline(REPO / "pipelines/ci.toml"), dataset, run)
    fit_combiners(open_run(run, dataset))
    return run
