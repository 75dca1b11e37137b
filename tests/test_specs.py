import pytest

from ensemble.core.errors import ConfigError
from ensemble.members.specs import load_member_spec, load_pipeline, member_spec_from_dict
from tests.conftest import REPO

BAD_SPECS = [
    ({"backbon": "resnet50"}, "unknown key 'backbon'. Did you mean 'backbone'\\? Allowed"),
    ({"backbone": "vgg16"}, "backbone must be one of \\[.*Received: backbone='vgg16'"),
    ({"kind": "tree"}, "kind must be one of \\['cnn', 'ovr'\\]"),
    ({"input_size": 16}, "input_size must be >= 32. Received: input_size=16"),
    ({"schedule": {"learning_rate": -0.1}}, "schedule.learning_rate must be > 0. Received"),
    (
        {"schedule": {"epochs": 3, "warmup_epochs": 5}},
        "schedule.warmup_epochs must be in \\[0, 3\\). Received: warmup_epochs=5.0",
    ),
    ({"schedule": {"learnin_rate": 0.1}}, "\\[schedule\\]: unknown key 'learnin_rate'"),
    ({"head": {"dropout": 1.5}}, "head.dropout must be in \\[0, 1\\)"),
    (
        {"head": {"dense_units": "many"}},
        "dense_units must be a whole number. Received: dense_units='many'",
    ),
    (
        {"augmentation": {"randaugment_magnitude": 3}},
        "augmentation.randaugment_magnitude must be in \\[0, 1\\]. Received",
    ),
    ({"schedule": {"epochs": True}}, "epochs must be a whole number. Received: epochs=True"),
    ({"schedule": {"learning_rate": False}}, "learning_rate must be a number. Received"),
    ({"seed": 1.5}, "seed must be a whole number. Received: seed=1.5"),
    ({"combine": "yes"}, "combine must be true or false. Received: combine='yes'"),
    ({"num_cpus": 0}, "num_cpus must be > 0. Received: num_cpus=0"),
    ({"num_cpus": True}, "num_cpus must be a number. Received: num_cpus=True"),
    ({"num_gpus": -1}, "num_gpus must be >= 0. Received: num_gpus=-1"),
    ({"augmentation": {"zoom_probability": 1.5}}, "augmentation.zoom_probability must be in"),
    ({"augmentation": {"zoom_max": 0.5}}, "augmentation.zoom_max must be in \\[1, 4\\]"),
    (
        {"augmentation": {"corruption_mode": "each"}},
        "augmentation.corruption_mode must be one of \\['independent', 'one'\\]. "
        "Received: corruption_mode='each'",
    ),
    (
        {"augmentation": {"corruption_family": "strong"}},
        "augmentation.corruption_family must be one of \\['standard', 'wide'\\]. "
        "Received: corruption_family='strong'",
    ),
    (
        {"init_from": "other", "weights": "imagenet"},
        "weights must be 'none' when init_from is set",
    ),
    ({"class_weights": "sqrt"}, "class_weights must be one of \\['balanced', 'none'\\]"),
    ({"kind": "ovr"}, "ovr.base_member must be a member name"),
    ({"head": 3}, "\\[head\\] must be a table"),
]


@pytest.mark.parametrize(("table", "match"), BAD_SPECS)
def test_bad_member_specs(table, match):
    with pytest.raises(ConfigError, match=match):
        member_spec_from_dict({"name": "m", **table})


def test_shipped_specs_load():
    for path in sorted((REPO / "members").rglob("*.toml")):
        spec = load_member_spec(path)
        assert spec.name
    for path in sorted((REPO / "pipelines").glob("*.toml")):
        assert load_pipeline(path).members


def test_both_flavours_ship_the_three_backbones():
    """From-scratch CPU specs exist for every backbone of the report's recipe.

    The pbc-cpu pipeline itself may leave a backbone out when it costs more than it brings in
    the 2-hour budget (measured in results/recipe-ablation.md); its spec still ships.
    """
    scratch = {load_member_spec(path) for path in (REPO / "members/cpu").glob("*.toml")}
    scratch_backbones = {m.backbone for m in scratch if m.kind == "cnn" and not m.pretrained}
    report = load_pipeline(REPO / "pipelines/an2dl.toml")
    assert {"resnet50", "efficientnetb0", "mobilenetv2"} <= scratch_backbones
    assert {m.backbone for m in report.members if m.kind == "cnn"} <= scratch_backbones
    assert all(
        m.weights == "imagenet" and m.finetune.learning_rate == 8e-5
        for m in report.members
        if m.kind == "cnn"
    )
    assert any(m.kind == "ovr" for m in report.members)


def test_spec_file_name_is_default_name(tmp_path):
    (tmp_path / "alpha.toml").write_text('backbone = "mobilenetv2"\n')
    assert load_member_spec(tmp_path / "alpha.toml").name == "alpha"


def test_invalid_toml_names_the_file(tmp_path):
    (tmp_path / "x.toml").write_text("backbone = \n")
    with pytest.raises(ConfigError, match="x.toml is not valid TOML"):
        load_member_spec(tmp_path / "x.toml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('members = ["ci/tiny-a.toml"]\nflavour = 1\n', "unknown key 'flavour'"),
        ("members = []\n", "'members' must be a non-empty list"),
        ('members = ["nope.toml"]\n', "member spec 'nope.toml' not found"),
        ('members = ["ci/tiny-a.toml", "ci/tiny-a.toml"]\n', "member names must be unique"),
        ('members = ["ci/tiny-ovr.toml"]\n', "needs base_member 'tiny-a' in the pipeline"),
        ('members = ["ci/tiny-a.toml"]\nfractions = {train = 0.9, val = 0.2}\n', "must sum to 1"),
    ],
)
def test_bad_pipelines(tmp_path, text, match):
    (tmp_path / "members").symlink_to(REPO / "members")  # member paths resolve as in the repo
    path = tmp_path / "pipelines" / "bad.toml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_pipeline(path)


@pytest.mark.parametrize("name", ["ci", "demo", "pbc-cpu", "pbc-cpu-students", "an2dl"])
def test_a_copied_built_in_pipeline_finds_its_member_specs(name, tmp_path):
    import shutil

    from ensemble.recipes import recipes_root

    copy = tmp_path / "mypipe.toml"
    shutil.copy(recipes_root() / "pipelines" / f"{name}.toml", copy)
    original = load_pipeline(recipes_root() / "pipelines" / f"{name}.toml")
    assert load_pipeline(copy).members == original.members


@pytest.mark.large  # trains a member
def test_ci_trains_from_a_copy_in_an_empty_folder(synthetic_folder, tmp_path, capsys):
    import shutil

    from ensemble.recipes import recipes_root
    from tests.conftest import run_cli

    shutil.copy(recipes_root() / "pipelines" / "ci.toml", tmp_path / "mypipe.toml")
    args = ["train-members", "--pipeline", tmp_path / "mypipe.toml", "--only", "tiny-a"]
    code, _, err = run_cli([*args, "--data", synthetic_folder, "--run", tmp_path / "run"], capsys)
    assert code == 0, err
    assert (tmp_path / "run/members/tiny-a/model.keras").is_file()


def test_a_member_spec_found_nowhere_names_every_place_looked(tmp_path):
    (tmp_path / "p.toml").write_text('members = ["nowhere/x.toml"]\n')
    with pytest.raises(ConfigError, match=r"member spec 'nowhere/x.toml' not found \(looked in"):
        load_pipeline(tmp_path / "p.toml")


def test_a_fit_table_gives_fit_stacker_its_defaults(tmp_path):
    (tmp_path / "p.toml").write_text(
        'members = ["ci/tiny-a.toml", "ci/tiny-b.toml"]\n'
        '[fit]\nmembers = ["tiny-b"]\ntta = true\nshift_copies = 2\n'
    )
    fit = load_pipeline(tmp_path / "p.toml").fit
    assert fit.options() == {"tta": True, "shift_copies": 2, "members": ["tiny-b"]}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('members = ["tiny-c"]', r"\[fit\] members \['tiny-c'\] are not members .* Did you mean"),
        ("shift_copies = -1", "fit.shift_copies must be"),
        ("tta = 1", "tta must be true or false"),
        ("tt = true", "unknown key 'tt'. Did you mean 'tta'"),
    ],
)
def test_bad_fit_tables_are_refused_with_the_key(table, message, tmp_path):
    (tmp_path / "p.toml").write_text(
        f'members = ["ci/tiny-a.toml", "ci/tiny-b.toml"]\n[fit]\n{table}\n'
    )
    with pytest.raises(ConfigError, match=message):
        load_pipeline(tmp_path / "p.toml")


def test_fit_stacker_takes_the_recorded_fit_table(fitted_ci_run, tmp_path, capsys):
    import json
    import shutil

    from tests.conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["fit"] = {"members": ["tiny-a", "tiny-b"], "tta": False, "shift_copies": 0}
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["fit-stacker", "--run", run], capsys)
    assert code == 0, err
    assert (
        "from the pipeline's [fit] table: tta False, shift_copies 0, members ['tiny-a', 'tiny-b']"
        in err
    )
    selection = json.loads((run / "combiners/selection.json").read_text())
    assert selection["members"] == ["tiny-a", "tiny-b"]
    code, _, err = run_cli(["fit-stacker", "--run", run, "--members", "tiny-a,tiny-ovr"], capsys)
    assert code == 0, err
    selection = json.loads((run / "combiners/selection.json").read_text())
    assert selection["members"] == ["tiny-a", "tiny-ovr"]  # the command line wins
