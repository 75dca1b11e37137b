"""fit-stacker --shift-copies and --members: combiners fitted on shifted copies, chosen members."""

import json
import shutil

import numpy as np
import pytest

from ensemble.combine.base import Blend, MemberOutputs
from ensemble.combine.shifted_blend import with_copies
from ensemble.run.directory import RunDir
from ensemble.serve.ensemble import Ensemble
from tests.conftest import run_cli


def _outputs(n: int, offset: float) -> MemberOutputs:
    probabilities = np.full((2, n, 3), offset)
    return MemberOutputs(
        probabilities=probabilities,
        calibrated=probabilities + 1,
        features=(np.full((n, 4), offset), np.full((n, 5), offset)),
    )


def test_copies_follow_the_clean_rows_and_stay_in_their_images_fold():
    n = 6
    folds = [(np.array([0, 1, 2, 3]), np.array([4, 5])), (np.array([2, 3, 4, 5]), np.array([0, 1]))]
    blend = Blend(
        outputs=_outputs(n, 0.0),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        ids=[f"img{i}" for i in range(n)],
        split_of={f"img{i}": "blend" for i in range(n)},
        folds=folds,
    )
    grown = with_copies(blend, [_outputs(n, 1.0), _outputs(n, 2.0)])

    assert grown.outputs.probabilities.shape == (2, 3 * n, 3)
    assert grown.outputs.probabilities[0, :, 0].tolist() == [0.0] * n + [1.0] * n + [2.0] * n
    assert grown.outputs.calibrated[1, n, 0] == 2.0
    assert [f.shape for f in grown.outputs.features] == [(3 * n, 4), (3 * n, 5)]
    assert grown.labels.tolist() == blend.labels.tolist() * 3
    assert grown.ids == blend.ids * 3
    for (fit, held), (clean_fit, clean_held) in zip(grown.folds, folds, strict=True):
        assert sorted(fit % n) == sorted(clean_fit.tolist() * 3)  # copies fitted with the image
        assert sorted(held % n) == sorted(clean_held.tolist() * 3)  # an image's copies held out
        assert set(fit % n).isdisjoint(held % n)  # ... and none of them fitted on
        assert len(fit) + len(held) == 3 * n


def test_no_copies_leave_blend_as_it_is():
    blend = Blend(_outputs(2, 0.0), np.array([0, 1]), ["a", "b"], {}, [])
    assert with_copies(blend, []) is blend


def test_fit_stacker_with_shift_copies_and_chosen_members(fitted_ci_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    clean_split = json.loads((run / "combiners/calibration-split.json").read_text())

    args = ["fit-stacker", "--run", run, "--shift-copies", "2", "--members", "tiny-b,tiny-a"]
    code, out, err = run_cli(args, capsys)

    assert code == 0, err
    assert "tiny-a               cross-validated blend accuracy (clean + 2 shifted copies)" in out
    selection = json.loads((run / "combiners/selection.json").read_text())
    assert selection["shift_copies"] == 2
    assert selection["members"] == ["tiny-b", "tiny-a"]  # in the order given
    # the conformal calibration half is the clean one a plain fit-stacker holds out
    assert json.loads((run / "combiners/calibration-split.json").read_text()) == clean_split
    fitted = Ensemble.load(RunDir.open(run))
    assert fitted.members_ == ["tiny-b", "tiny-a"] and fitted.fitted_on_shift_copies_ == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--members", "tiny-a,nope"],
            "members must name members of the run {run}. Choose from "
            "['tiny-a', 'tiny-b', 'tiny-ovr']. Received: ['tiny-a', 'nope']",
        ),
        (
            ["--members", "tiny-a", "--members", "tiny-a"],
            "members must not repeat a name. Received: ['tiny-a', 'tiny-a']",
        ),
        (
            ["--shift-copies", "-1"],
            "error: --shift-copies must be at least 0. Received: '-1'",
        ),
    ],
)
def test_bad_members_or_copies_are_refused(options, message, fitted_ci_run, capsys):
    code, _, err = run_cli(["fit-stacker", "--run", fitted_ci_run, *options], capsys)
    assert code == 2 and err.count("\n") == 1
    assert message.format(run=fitted_ci_run) in err
