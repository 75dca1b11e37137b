import numpy as np

from ensemble.members.ovr import fit_heads, fit_thresholds
from ensemble.members.specs import member_spec_from_dict


def test_heads_learn_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 10))
    labels = np.repeat(np.arange(3), 60)
    features = centres[labels] + rng.normal(0, 1, (180, 10))
    spec = member_spec_from_dict(
        {
            "name": "o",
            "kind": "ovr",
            "ovr": {"base_member": "x", "epochs": 8, "learning_rate": 0.05},
        }
    )
    heads, history = fit_heads(spec, features, labels, features, labels, 3)
    assert len(heads) == 3 and len(history) == 3
    scores = np.column_stack([h.predict(features, verbose=0)[:, 0] for h in heads])
    assert (scores.argmax(1) == labels).mean() > 0.95


def test_thresholds_maximise_f1():
    scores = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.7], [0.4, 0.6]])
    labels = np.array([0, 0, 1, 1])
    thresholds = fit_thresholds(scores, labels)
    assert thresholds[0] == 0.8 and thresholds[1] == 0.6
