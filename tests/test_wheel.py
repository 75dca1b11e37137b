"""The package as ``pip install .`` installs it: a wheel, in a fresh virtual environment.

The wheel is built from a copy of the sources (offline: ``--no-build-isolation`` uses the
setuptools already installed) and installed without its dependencies into a new virtual
environment; a ``.pth`` file added after the install lends it this environment's packages
(TensorFlow and the rest), so nothing is downloaded. Commands then run from an empty folder,
where no ``pipelines/`` or ``members/`` folder can help.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ensemble import __version__
from tests.conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "ensemble", "pipelines", "members")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(source, root / "src" / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*build, "--no-index", "--quiet", "-w", root / "dist", root / "src"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (built,) = (root / "dist").glob("blood_ensemble-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_bin(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps"]
    result = subprocess.run(
        [*install, "--no-index", "--quiet", wheel], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    # Only now (pip would otherwise see this environment's editable install as its own).
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run_installed(venv_bin: Path, cwd: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [venv_bin / "ensemble", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
    )


def test_wheel_ships_every_recipe_and_member_spec(wheel):
    expected = {
        f"ensemble/recipes/{path.relative_to(REPO).as_posix()}"
        for path in [*REPO.glob("pipelines/*.toml"), *REPO.glob("members/**/*.toml")]
    }
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".toml")}
    assert shipped == expected


def test_installed_wheel_prints_its_version(venv_bin, tmp_path):
    result = run_installed(venv_bin, tmp_path / "empty", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"blood-ensemble {__version__}\n"


def test_installed_wheel_runs_its_own_copy(venv_bin, tmp_path):
    result = subprocess.run(
        [venv_bin / "python", "-c", "import ensemble.recipes as r; print(r.recipes_root())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert Path(result.stdout.strip()).is_relative_to(venv_bin.parent)


def test_installed_wheel_finds_built_in_recipes_from_an_empty_folder(venv_bin, tmp_path):
    # The pipeline and all its member specs load before the (missing) data is looked at.
    result = run_installed(
        venv_bin, tmp_path / "empty", "train-members", "--pipeline", "demo", "--data", "missing"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: data source not found: missing."), result.stderr
    result = run_installed(
        venv_bin, tmp_path / "empty", "train-members", "--pipeline", "nope", "--data", "missing"
    )
    assert result.returncode == 2
    assert (
        "pipeline not found: give a pipeline TOML file or the name of a built-in pipeline "
        "['an2dl', 'ci', 'demo', 'pbc-cpu', 'pbc-cpu-ablation', 'pbc-cpu-students']. "
        "Received: pipeline='nope'"
    ) in result.stderr


@pytest.mark.large
def test_installed_wheel_runs_the_demo_from_an_empty_folder(venv_bin, tmp_path):
    folder = tmp_path / "empty"
    result = run_installed(venv_bin, folder, "demo", "--per-class", "24", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / "demo-output" / "report" / "report.md").is_file()
    assert "best combiner" in result.stdout and "best member" in result.stdout
