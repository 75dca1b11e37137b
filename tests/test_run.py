"""The run directory opened without its data: paths, manifest, member specs, data source."""

import json

import pytest

from ensemble import FORMAT_VERSION
from ensemble.core.errors import RunError
from ensemble.members.specs import member_spec_from_dict
from ensemble.run.directory import RunDir


def make_run(root, members, data_source="/nowhere", specs=None):
    """A run directory by hand: manifest, and spec.json (and metrics) for the given specs."""
    root.mkdir(parents=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "classes": ["a", "b"],
        "members": members,
        "data_source": str(data_source),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    for spec in specs or []:
        folder = root / "members" / spec["name"]
        folder.mkdir(parents=True)
        resolved = member_spec_from_dict(spec).to_dict() | spec  # as training writes it
        (folder / "spec.json").write_text(json.dumps(resolved))
    return RunDir.open(root)


def test_paths_and_typed_specs(tmp_path):
    run = make_run(
        tmp_path / "run",
        ["cnn", "heads"],
        specs=[
            {"name": "cnn", "backbone": "mobilenetv2", "input_size": 48},
            {"name": "heads", "kind": "ovr", "ovr": {"base_member": "cnn"}},
        ],
    )
    assert run.model_path("cnn") == tmp_path / "run/members/cnn/model.keras"
    assert run.split_path == tmp_path / "run/split.json"
    assert run.combiners_dir == tmp_path / "run/combiners"
    assert run.member_spec("heads").ovr.base_member == "cnn"
    assert [run.input_size("cnn"), run.input_size("heads")] == [48, 48]  # heads: the base's size
    assert run.classes == ["a", "b"] and run.name == "run"


def test_members_leave_out_stages_that_do_not_combine(tmp_path):
    run = make_run(
        tmp_path / "run",
        ["stage", "final", "untrained"],
        specs=[{"name": "stage", "combine": False}, {"name": "final"}],
    )
    assert run.members == ["final", "untrained"]
    with pytest.raises(RunError, match=r"members not trained yet in .*: \['final', 'untrained'\]"):
        run.trained_members()


@pytest.mark.parametrize("absolute", [True, False])
def test_data_source_absolute_or_relative_to_where_the_run_was_made(
    tmp_path, monkeypatch, absolute
):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "run", [], data_source=data if absolute else "data")
    assert run.data_source().resolve() == data
    assert run.data_source(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # --data wins


def test_moved_data_names_the_recorded_path_and_the_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "run", [], data_source="old/data")
    with pytest.raises(RunError) as caught:
        run.data_source()
    assert str(caught.value) == (
        f"the data of run {tmp_path / 'run'} is not at old/data (relative to {tmp_path}), the "
        "path its manifest records. Pass --data with the data's current location."
    )


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (None, "is not a run directory \\(no manifest.json\\). Run train-members first."),
        ({"format_version": 0}, "was written by format version 0"),
    ],
)
def test_open_refuses(tmp_path, manifest, match):
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match=match):
        RunDir.open(tmp_path)


def test_member_without_spec_is_named(tmp_path):
    run = make_run(tmp_path / "run", ["m"])
    with pytest.raises(RunError, match="member 'm' of run .* has no spec.json"):
        run.member_spec("m")
