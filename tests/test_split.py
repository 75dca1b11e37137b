import json
import shutil

import numpy as np
import pytest

from ensemble.core.errors import ConfigError, RunError
from ensemble.data.audit import run_audit
from ensemble.data.sources import load_dataset
from ensemble.data.split import SPLITS, check_fractions, load_split, make_split, save_split
from tests.conftest import run_cli


@pytest.fixture()
def data(synthetic_folder):
    return load_dataset(synthetic_folder)


def test_same_data_and_seed_give_same_bytes(data, tmp_path):
    save_split(make_split(data, seed=7), data, tmp_path / "a.json")
    save_split(make_split(data, seed=7), data, tmp_path / "b.json")
    save_split(make_split(data, seed=8), data, tmp_path / "c.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_stratified_fractions(data):
    split = make_split(data, seed=0)
    for label in data.classes:
        ids = [r.id for r in data.records if r.label == label]
        counts = {name: sum(split.assignment[i] == name for i in ids) for name in SPLITS}
        assert abs(counts["train"] - 0.7 * len(ids)) <= 1
        assert all(counts[name] >= 1 for name in ("val", "blend", "test"))


def test_duplicate_groups_stay_in_one_split(data):
    ids = [r.id for r in data.records]
    groups = [ids[i : i + 5] for i in range(0, 40, 5)]  # eight groups of five
    for seed in range(5):
        split = make_split(data, groups, seed=seed)
        for group in groups:
            assert len({split.assignment[i] for i in group}) == 1


def test_excluded_images_are_in_no_split(data):
    dropped = [data.records[0].id, data.records[5].id]
    split = make_split(data, excluded=dropped, seed=0)
    assert all(split.assignment[i] == "excluded" for i in dropped)
    assert not set(dropped) & {i for name in SPLITS for i in split.ids(name)}


def test_load_split_refuses_changed_data(data, synthetic_folder, tmp_path):
    save_split(make_split(data), data, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json", data).assignment == make_split(data).assignment
    changed = tmp_path / "changed"
    shutil.copytree(synthetic_folder, changed)
    (changed / "platelet" / "platelet_00084.png").unlink()
    shutil.copy(changed / "basophil" / "basophil_00000.png", changed / "basophil" / "new.png")
    with pytest.raises(RunError, match="data changed since the split.*1 added, 1 removed"):
        load_split(tmp_path / "split.json", load_dataset(changed))


def test_load_split_refuses_other_format_version(data, tmp_path):
    path = tmp_path / "split.json"
    save_split(make_split(data), data, path)
    payload = json.loads(path.read_text())
    payload["format_version"] = 999
    path.write_text(json.dumps(payload))
    with pytest.raises(RunError, match="format version 999"):
        load_split(path, data)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ({"train": 0.5, "val": 0.1, "blend": 0.1, "test": 0.1}, "must sum to 1"),
        ({"train": 0.7, "val": 0.1, "blend": 0.1, "tests": 0.1}, "unknown split name 'tests'"),
        ({"train": 1.2, "val": -0.2}, "train=1.2 must be in \\[0, 1\\)"),
        ({"train": 0.0, "val": 0.5, "blend": 0.5}, "train must be > 0"),
    ],
)
def test_bad_fractions(fractions, match):
    with pytest.raises(ConfigError, match=match):
        check_fractions(fractions)


def test_cli_split_bad_fractions_one_line(synthetic_folder, tmp_path, capsys):
    code, _, err = run_cli(["split", synthetic_folder, "--fractions", "0.5,0.1,0.1,0.1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "must sum to 1" in err


def test_real_split_keeps_near_duplicate_pairs_together(real_data, tmp_path):
    """Near-duplicate pairs of the real folder, found by the audit, never straddle splits."""
    root = tmp_path / "subset"
    full = load_dataset(real_data / "pbc96")
    pairs = [
        ("eosinophil/EO_246684.jpg", "eosinophil/EO_409717.jpg"),
        ("ig/IG_101958.jpg", "ig/IG_957559.jpg"),
    ]
    rng = np.random.default_rng(0)
    chosen = {i for pair in pairs for i in pair}
    chosen |= {full.records[i].id for i in rng.choice(len(full.records), 60, replace=False)}
    for image_id in chosen:
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_data / "pbc96" / image_id, root / image_id)
    subset = load_dataset(root)
    report = run_audit(subset)
    for pair in pairs:
        assert any(set(pair) <= set(group) for group in report.groups)
    for seed in range(3):
        split = make_split(subset, report.groups, seed=seed)
        for first, second in pairs:
            assert split.assignment[first] == split.assignment[second]


@pytest.mark.parametrize("mode", ["auto", "0"])
def test_cli_split_prints_a_line_per_stage(mode, synthetic_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_PROGRESS", mode)  # stderr is no terminal here: lines, no bars
    args = ["split", synthetic_folder, "--out", tmp_path / "split.json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and out.startswith(f"split written to {tmp_path / 'split.json'}")
    stages = [
        "audit: decoding 96 images at 96 px",
        "audit: near duplicates among 96 distinct images",
        "audit: non-cell pictures and colour casts among 96 pictures",
        "split: 96 images into train, val, blend, test (0 duplicate groups kept together, "
        "0 excluded)",
    ]
    assert err.splitlines() == (stages if mode == "auto" else [])
