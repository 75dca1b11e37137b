import json

import pytest

from benchmarks.contamination import KINDS, contaminate
from ensemble.core.errors import ConfigError
from ensemble.data.audit import AuditThresholds, run_audit
from ensemble.data.sources import load_dataset
from tests.conftest import run_cli

# Injected kinds that a finding of another kind also covers: a byte copy of an image whose
# near copy exists is reported with its whole group, as a near duplicate.
ALSO_COUNTS = {"exact_duplicate": {"near_duplicate"}}


def found_kinds(report):
    found = {}
    for finding in report.findings:
        for image_id in finding.ids:
            found.setdefault(image_id, set()).add(finding.kind)
    return found


@pytest.fixture(scope="module")
def contaminated(real_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("contaminated") / "data"
    injected = contaminate(real_data / "pbc96", root, per_class=40, per_kind=100, seed=3)
    return injected, run_audit(load_dataset(root))


@pytest.mark.parametrize("kind", KINDS)
def test_each_injected_kind_is_found(contaminated, kind):
    injected, report = contaminated
    found = found_kinds(report)
    ids = injected.injected[kind]
    assert len(ids) >= 100
    hits = sum(bool(({kind} | ALSO_COUNTS.get(kind, set())) & found.get(i, set())) for i in ids)
    assert hits / len(ids) >= 0.99


def test_clean_images_rarely_flagged(contaminated):
    injected, report = contaminated
    found = found_kinds(report)
    # The clean images used as sources of injected copies are rightly in duplicate groups.
    wrong = [
        i
        for i in injected.clean
        if found.get(i, set()) - {"exact_duplicate", "near_duplicate", "label_conflict"}
    ]
    assert len(wrong) / len(injected.clean) <= 0.01


def test_clean_manifest_drops_flagged_keeps_one_copy(contaminated, tmp_path):
    injected, report = contaminated
    manifest = tmp_path / "clean.csv"
    kept = report.write_clean_manifest(manifest)
    rows = manifest.read_text().splitlines()
    assert rows[0] == "path,label" and len(rows) == kept + 1
    paths = {row.rsplit(",", 1)[0].strip('"') for row in rows[1:]}
    for kind in ("unreadable", "non_cell", "colour_cast", "label_conflict"):
        assert not paths & set(injected.injected[kind]), kind
    clean_again = load_dataset(manifest, root=injected.root)
    assert len(clean_again.records) == kept


def test_synthetic_audit_json_is_deterministic(synthetic_folder):
    first = run_audit(load_dataset(synthetic_folder)).to_json()
    second = run_audit(load_dataset(synthetic_folder)).to_json()
    assert first == second
    payload = json.loads(first)
    assert payload["n_images"] == 96 and set(payload["counts"]) >= {"unreadable", "non_cell"}


def test_audit_finds_unreadable_and_conflict_in_small_folder(synthetic_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_folder, root)
    (root / "basophil" / ".DS_9.jpg").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (root / "basophil" / "empty.png").write_bytes(b"")
    shutil.copy(root / "platelet" / "platelet_00084.png", root / "monocyte" / "copy.png")
    report = run_audit(load_dataset(root))
    found = found_kinds(report)
    assert found["basophil/.DS_9.jpg"] == {"unreadable"}
    assert found["basophil/empty.png"] == {"unreadable"}
    assert "label_conflict" in found["monocyte/copy.png"]
    assert "label_conflict" in found["platelet/platelet_00084.png"]
    excluded = report.excluded_ids()
    assert {"monocyte/copy.png", "platelet/platelet_00084.png", "basophil/empty.png"} <= excluded


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"near_duplicate": 1.5}, "near-duplicate threshold must be in \\(0, 1\\]. Received: 1.5"),
        ({"colour_cast": 0}, "colour-cast threshold must be > 0"),
        ({"non_cell": -1}, "non-cell threshold must be > 0"),
        ({"size": 8}, "audit image size must be >= 32"),
    ],
)
def test_bad_thresholds(params, match):
    with pytest.raises(ConfigError, match=match):
        AuditThresholds(**params)


def test_cli_audit_writes_json_and_manifest(synthetic_folder, tmp_path, capsys):
    code, out, err = run_cli(
        [
            "audit",
            synthetic_folder,
            "--json",
            tmp_path / "a.json",
            "--write-clean",
            tmp_path / "c.csv",
        ],
        capsys,
    )
    assert code == 0, err
    assert "finding" in out and "unreadable" in out
    assert json.loads((tmp_path / "a.json").read_text())["n_images"] == 96
    assert (tmp_path / "c.csv").read_text().startswith("path,label\n")


def test_cli_audit_builtin_synthetic(capsys):
    code, out, err = run_cli(["audit", "--synthetic"], capsys)
    assert code == 0, err
    assert "240 files, 8 classes" in out


def test_cli_bad_threshold_is_one_line(capsys, synthetic_folder):
    code, out, err = run_cli(["audit", synthetic_folder, "--near-duplicate", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Received: 2.0" in err
