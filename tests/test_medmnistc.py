"""MedMNIST-C, a peer's corruption suite, as an evaluation copy (ensemble.corrupt.medmnistc)."""

import csv
import io
import json

import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.corrupt import medmnistc
from tests.conftest import run_cli

installed = pytest.mark.skipif(not medmnistc.available(), reason=medmnistc.INSTALL_HINT)


def _cells(n=6):
    from ensemble.data.synthetic import make_arrays

    images, _, _ = make_arrays(per_class=1, size=48, seed=3)
    return images[:n]


@installed
def test_the_suite_is_the_packages_blood_cell_suite(suite):
    assert len(suite.kinds()) == 11
    assert {"motion_blur", "stain_deposit", "bubble", "brightness_down"} <= set(suite.kinds())


@pytest.fixture(scope="module")
def suite():
    return medmnistc.shared_suite()


@installed
@pytest.mark.parametrize("kind", ["motion_blur", "stain_deposit", "bubble", "jpeg_compression"])
def test_a_copy_is_seeded_and_does_not_depend_on_what_ran_before(kind, suite):
    images = _cells()
    first = suite.corrupt(images, kind, 5, seed=1)
    suite.corrupt(images, "bubble", 2, seed=7)  # draws from the process's generators
    assert np.array_equal(first, suite.corrupt(images, kind, 5, seed=1))
    assert first.shape == images.shape and first.dtype == np.uint8
    assert not np.array_equal(first, images)
    if kind in ("stain_deposit", "bubble"):  # drawn at random: another seed, other marks
        assert not np.array_equal(first, suite.corrupt(images, kind, 5, seed=2))


@installed
def test_the_package_is_never_imported_here():
    """PyTorch (which medmnistc imports) and TensorFlow crash in one process."""
    import sys

    medmnistc.available()
    medmnistc.shared_suite().kinds()  # the suite runs in a process of its own
    assert "medmnistc" not in sys.modules


@installed
def test_severity_makes_it_worse(suite):
    images = _cells()
    gaps = [
        np.abs(suite.corrupt(images, "brightness_down", s).astype(int) - images).mean()
        for s in (1, 3, 5)
    ]
    assert gaps[0] < gaps[1] < gaps[2]


@installed
@pytest.mark.parametrize(
    ("kind", "severity", "message"),
    [
        ("fog", 3, "unknown MedMNIST-C kind 'fog'. Choose from ['pixelate',"),
        ("bubble", 6, "severity must be one of [1, 2, 3, 4, 5]. Received: 6"),
    ],
)
def test_bad_requests_are_refused_in_words(kind, severity, message, suite):
    with pytest.raises(ConfigError) as error:
        suite.corrupt(_cells(2), kind, severity)
    assert message in str(error.value)


@installed
def test_the_report_has_a_medmnistc_column(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["report", "--run", fitted_ci_run, "--data", synthetic_folder, "--out", out]
    code, _, err = run_cli([*args, "--no-shifted", "--no-zoomed", "--medmnistc"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["medmnistc"]) == set(metrics["models"])
    by_kind = metrics["medmnistc_by_kind"]["hard"]
    in_turn = medmnistc.kinds()[: metrics["n_images"]]  # one kind per image, in turn
    assert sorted(by_kind) == sorted(in_turn)
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    hard = next(row for row in rows if row["model"] == "hard")
    assert float(hard["medmnistc_accuracy"]) == pytest.approx(
        metrics["medmnistc"]["hard"]["accuracy"]
    )
    text = (out / "report.md").read_text()
    assert "The MedMNIST-C copy applies the corruption suite of Di Salvo et al. (2024)" in text
    assert "Accuracy on the MedMNIST-C copy, by kind:" in text
    assert "- On the MedMNIST-C copy: " in text  # McNemar of the best combiner vs member
    page = (out / "report.html").read_text()
    assert "<h3>Accuracy per kind of MedMNIST-C corruption</h3>" in page
    assert "<td>medmnistc</td>" in page  # its McNemar row in the significance table


def test_asking_for_it_without_the_package_says_how_to_install(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(medmnistc, "available", lambda: False)
    args = ["report", "--run", fitted_ci_run, "--data", synthetic_folder, "--out", tmp_path / "r"]
    code, _, err = run_cli([*args, "--medmnistc"], capsys)
    assert code == 2 and "--medmnistc: MedMNIST-C is not installed: pip install" in err
    assert "[eval]" in err and err.count("\n") == 1
