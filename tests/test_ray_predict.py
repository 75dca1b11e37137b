"""``predict --ray``: Ray Data over the files on a local cluster (``ray.init(num_cpus=2)``)."""

import csv

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.large  # starts a Ray cluster: with the slow tests (-m large)

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (optional extra): pip install -e '.[dev,ray]'"
)

#: Decimals of every number in the CSV.
CSV_DECIMALS = 6


#: Columns holding numbers besides ``proba_<class>``: equal within 1e-6, not to the bit (Ray's
#: actors run TensorFlow on one thread each, which adds sums in another order).
NUMBER_COLUMNS = ("confidence", "agreement", "ood_score")


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster: two one-CPU actors."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _assert_same_rows(local: list[dict], remote: list[dict]) -> None:
    """Same files in the same order, same columns; numbers within 1e-6, the rest exactly."""
    assert [row["path"] for row in remote] == [row["path"] for row in local]
    for mine, theirs in zip(local, remote, strict=True):
        assert list(theirs) == list(mine)
        for column, value in mine.items():
            if isinstance(value, float):
                assert theirs[column] == pytest.approx(value, abs=1e-6), (mine["path"], column)
            else:
                assert theirs[column] == value, (mine["path"], column)


def test_ray_rows_equal_local_rows_error_rows_and_order_included(
    cluster, fitted_ci_run, messy_folder, capsys
):
    from ensemble.serve.predict import iter_prediction_rows, prepare_prediction
    from ensemble.serve.ray_predict import iter_prediction_rows_on_ray

    job = prepare_prediction(messy_folder, fitted_ci_run)
    local = list(iter_prediction_rows(job))
    capsys.readouterr()
    # Chunks of 3 files: several blocks over the two actors, returned in file order.
    remote = list(iter_prediction_rows_on_ray(job, chunk=3))
    _assert_same_rows(local, remote)
    errors = {row["path"]: row["error"] for row in remote if row["error"]}
    assert set(errors) == {"text.jpg", "truncated.jpg", "zero.jpg"}
    assert errors["zero.jpg"] == "empty file (0 bytes)"
    assert all(row["prediction"] is None for row in remote if row["error"])
    assert capsys.readouterr().err.count("skipped ") == 3  # as locally, one line each


def test_ray_command_writes_the_local_command_csv(
    cluster, fitted_ci_run, messy_folder, tmp_path, capsys
):
    args = ["predict", messy_folder, "--run", fitted_ci_run, "--out"]
    code, _, local_err = run_cli([*args, tmp_path / "local.csv"], capsys)
    assert code == 3, local_err
    ray_args = [*args, tmp_path / "ray.csv", "--ray", "local", "--num-cpus", "1"]
    code, _, err = run_cli(ray_args, capsys)
    assert code == 3, err  # some files unreadable, as locally
    assert "5 predicted, 3 skipped" in err and err.count("skipped ") == local_err.count("skipped ")
    local, remote = (
        list(csv.DictReader((tmp_path / name).open())) for name in ("local.csv", "ray.csv")
    )
    assert [list(row) for row in remote] == [list(row) for row in local]
    for mine, theirs in zip(local, remote, strict=True):
        for column, value in mine.items():
            if value and (column in NUMBER_COLUMNS or column.startswith("proba_")):
                # the documented tolerance: noise of 1e-6 may move the last digit
                unit = 10.0**-CSV_DECIMALS
                assert abs(float(theirs[column]) - float(value)) <= unit, (mine["path"], column)
            else:
                assert theirs[column] == value, (mine["path"], column)


def test_actor_larger_than_any_node_is_refused_in_one_line(
    cluster, fitted_ci_run, messy_folder, capsys
):
    code, _, err = run_cli(
        ["predict", messy_folder, "--run", fitted_ci_run, "--ray", "local", "--num-cpus", "3"],
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    assert "--num-cpus 3 is more than the largest node of the cluster has (2 CPUs)" in err


def test_a_user_error_inside_an_actor_reaches_the_driver_as_itself(
    cluster, fitted_ci_run, messy_folder
):
    """E.g. a node that does not see the run: raised as the actor's error, not a Ray traceback."""
    from ensemble.core.errors import ConfigError
    from ensemble.serve.predict import prepare_prediction
    from ensemble.serve.ray_predict import iter_prediction_rows_on_ray

    job = prepare_prediction(messy_folder, fitted_ci_run)
    job.ensemble.combiner_ = "no-such-combiner"  # what each actor loads
    with pytest.raises(ConfigError, match="unknown combiner 'no-such-combiner'"):
        list(iter_prediction_rows_on_ray(job))


def test_without_ray_the_option_says_how_to_install(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = run_cli(["predict", tmp_path, "--run", tmp_path, "--ray", "local"], capsys)
    assert code == 2 and "pip install 'blood-ensemble[ray]'" in err
