import os

import numpy as np
import pytest
from PIL import Image

from ensemble.core.errors import DataError
from ensemble.data.sources import load_dataset
from tests.conftest import run_cli


def write_image(path, colour=(200, 100, 150), size=(20, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)


def test_folder_source_nested_and_hidden_rules(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "deeper" / "y.JPG", fmt="JPEG")
    write_image(tmp_path / "b" / "z w ü.png")  # spaces and non-ASCII in the name
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # OS clutter: ignored
    (tmp_path / "b" / ".DS_123.jpg").write_bytes(b"\0\0\0\1Bud1")  # hidden image name: kept
    (tmp_path / "b" / "notes.txt").write_text("not an image suffix")
    write_image(tmp_path / ".hidden_class" / "q.png")
    write_image(tmp_path / "a" / ".cache" / "q.png")
    data = load_dataset(tmp_path)
    assert data.classes == ["a", "b"]
    assert sorted(r.id for r in data.records) == [
        "a/deeper/y.JPG",
        "a/x.png",
        "b/.DS_123.jpg",
        "b/z w ü.png",
    ]
    images, hashes, failures = data.load_images(16)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert [f.id for f in failures] == ["b/.DS_123.jpg"]
    assert "not an image" in failures[0].reason


def test_symlink_loop_is_harmless(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [r.id for r in load_dataset(tmp_path).records] == ["a/x.png"]


def test_npz_source_with_sidecar_and_column_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([[0], [1], [2], [0], [1], [2]]))
    (tmp_path / "set.classes.txt").write_text("x\ny\nz\n")
    data = load_dataset(tmp_path / "set.npz")
    assert data.classes == ["x", "y", "z"]
    assert data.records[4].id == "set.npz#4" and data.records[4].label == "y"
    loaded, _, failures = data.load_images(12)
    assert not failures and np.array_equal(loaded, images)


def test_npz_class_names_by_option(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 1]))
    assert load_dataset(tmp_path / "d.npz", classes=["p", "q"]).classes == ["p", "q"]


def test_csv_source_relative_to_csv_or_root(tmp_path):
    write_image(tmp_path / "imgs" / "one.png")
    write_image(tmp_path / "imgs" / "two.png", colour=(1, 2, 3))
    (tmp_path / "imgs" / "m.csv").write_text("path,label\none.png,cat\ntwo.png,dog\n")
    assert load_dataset(tmp_path / "imgs" / "m.csv").classes == ["cat", "dog"]
    (tmp_path / "elsewhere.csv").write_text("path,label\none.png,cat\n")
    with pytest.raises(DataError, match="listed image not found.*--data-root"):
        load_dataset(tmp_path / "elsewhere.csv")
    assert len(load_dataset(tmp_path / "elsewhere.csv", root=tmp_path / "imgs").records) == 1


def make_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "noimg" / "a" / "x.png")
    (tmp_path / "noimg" / "b").mkdir()
    np.savez(tmp_path / "noimages.npz", pictures=np.zeros((2, 4, 4, 3), np.uint8), labels=[0, 1])
    np.savez(tmp_path / "mismatch.npz", images=np.zeros((3, 4, 4, 3), np.uint8), labels=[0, 1])
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")


BAD_SOURCES = [
    ("missing", "data source not found: .*missing"),
    ("empty", "no class folders in .*empty"),
    ("noimg", "class folder .*noimg/b has no images"),
    ("noimages.npz", "has no 'images' array. Found arrays: \\['labels', 'pictures'\\]"),
    ("mismatch.npz", "3 images but 2 labels"),
    ("bad.csv", "must have a header with columns 'path,label'"),
]


@pytest.mark.parametrize(("name", "match"), BAD_SOURCES)
def test_bad_sources_raise_data_error(tmp_path, name, match):
    make_bad_sources(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / name)


@pytest.mark.parametrize(("name", "match"), BAD_SOURCES)
def test_bad_sources_give_one_line_exit_2(tmp_path, capsys, name, match):
    make_bad_sources(tmp_path)
    code, out, err = run_cli(["audit", tmp_path / name], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_class_missing_from_data(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match="class 'b' has no images"):
        load_dataset(tmp_path, classes=["a", "b"])


def test_real_folder_loads(real_data):
    data = load_dataset(real_data / "pbc96")
    assert data.classes == [
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ]
    assert len(data.records) == 14513


def test_usage_errors_are_one_line_exit_2(synthetic_folder, capsys):
    code, _, err = run_cli(["split", synthetic_folder, "--fractions", "0.7,0.3"], capsys)
    assert code == 2 and "fractions must be 4 numbers" in err and err.count("\n") == 1
    code, _, err = run_cli(["audit", "--no-such-option"], capsys)
    assert code == 2 and "No such option" in err and err.count("\n") == 1
