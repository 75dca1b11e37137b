"""One forward pass per member gives both its class probabilities and its pooled features.

:func:`cached_member_outputs` keeps them per member and split in the run directory
(``features/<member>/<split>.npz`` plus a JSON key; ``<split>-tta.npz`` for the outputs averaged
over the 8 dihedral views), and recomputes them whenever the member's model file or the split
changed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import weakref
from pathlib import Path

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.fileio import atomic_write_bytes, atomic_write_json
from ensemble.core.hashes import file_sha256
from ensemble.members.backbones import POOLED_FEATURES


def feature_model(model):
    """A model returning ``[probabilities, pooled_features]`` from one pass through ``model``."""
    import keras

    return keras.Model(model.input, [model.output, model.get_layer(POOLED_FEATURES).output])


_FEATURE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward(model, images: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """One pass of ``model`` over ``images``: ``[outputs, pooled features]``.

    The one forward pass of the package (fit-stacker, predict, report, the API). The batch is
    padded with blank images to a multiple of ``batch_size``, so that every call sees one batch
    shape and TensorFlow traces the model once per process instead of once per odd-sized last
    batch (a trace of ResNet50 costs seconds); the feature model is built once per model.
    """
    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = feature_model(model)
    if len(images) == 0:  # Keras cannot predict on no images
        return [
            np.zeros((0, *output.shape[1:]), np.float32)
            for output in _FEATURE_MODELS[model].outputs
        ]
    missing = -len(images) % batch_size
    padded = images
    if missing:
        blank = np.zeros((missing, *images.shape[1:]), images.dtype)
        padded = np.concatenate([images, blank])
    outputs = _FEATURE_MODELS[model].predict(padded, batch_size=batch_size, verbose=0)
    return [output[: len(images)] for output in outputs]


def member_outputs(
    model, images: np.ndarray, batch_size: int = 256, tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` and pooled features ``(N, F)`` of ``images`` (uint8).

    For a one-vs-rest member the "probabilities" are its per-class scores normalised to sum
    to one, so it can take part in averaging like any member. With ``tta``, both are averaged
    over the 8 dihedral views of each image (test-time augmentation).
    """
    probabilities, features = average_over_views(
        lambda view: forward(model, view, batch_size), images, tta
    )
    return probabilities.astype(np.float32), features.astype(np.float32)


def average_over_views(forward, images: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """One member's ``forward(images) → (outputs, pooled features)``, over the dihedral views.

    Args:
        forward: runs the member on a batch; returns its outputs and pooled features.
        images: ``(N, S, S, 3)`` images.
        tta: average over the 8 dihedral views of each image instead of one pass.

    Returns:
        ``(probabilities, features)`` as float64: the mean outputs normalised to sum to one
        per image, and the mean features.
    """
    from ensemble.members.inputs import dihedral_views

    views = dihedral_views(images) if tta else [images]
    outputs = features = 0.0
    for view in views:
        view_outputs, view_features = forward(view)
        outputs = outputs + np.asarray(view_outputs, np.float64) / len(views)
        features = features + np.asarray(view_features, np.float64) / len(views)
    totals = outputs.sum(axis=1, keepdims=True)
    return outputs / np.where(totals > 0, totals, 1.0), features


@functools.lru_cache(maxsize=16)
def _loaded_model(path: str, sha256: str):
    return load_keras_model(Path(path))


def member_model(path: Path, sha256: str | None = None):
    """A member's ``model.keras``, loaded once per process for each content hash.

    fit-stacker reads every member on val, blend and the shifted copies of blend; loading a
    Keras model takes seconds, so each is loaded once. A changed file (another hash) is loaded
    again.
    """
    return _loaded_model(str(path), sha256 or file_sha256(path))


def cached_member_outputs(
    run, member: str, split_name: str, *, tta: bool = False, model_sha256: str | None = None
) -> dict[str, np.ndarray]:
    """Probabilities, features, ids and labels of one member on one split, cached in the run.

    Args:
        run: the run with its data (:class:`~ensemble.run.directory.Run`); pixels are decoded
            only when the cache is cold.
        member: member name.
        split_name: ``"val"``, ``"blend"``, ...
        tta: average over the 8 dihedral views (cached apart from the plain outputs).
        model_sha256: the member's model hash when the caller has it already (saves a read).

    Returns:
        ``{"ids", "labels", "probabilities", "features"}`` in the split's id order.
    """
    directory = run.directory
    model_path = directory.model_path(member)
    ids = run.split.ids(split_name)
    key = {
        "member": member,
        "model_sha256": model_sha256 or file_sha256(model_path),
        "split": split_name,
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    if tta:  # only then: the key of plain outputs stays as earlier versions wrote it
        key["tta"] = True
    folder = directory.features_dir(member)
    stem = f"{split_name}-tta" if tta else split_name
    data_path, key_path = folder / f"{stem}.npz", folder / f"{stem}.json"
    if data_path.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key:
        with np.load(data_path, allow_pickle=False) as cached:
            return {name: cached[name] for name in cached.files}
    model = member_model(model_path, key["model_sha256"])
    images, labels = run.images(split_name, model.input_shape[1])
    probabilities, features = member_outputs(model, images, tta=tta)
    result = {
        "ids": np.array(ids),
        "labels": labels,
        "probabilities": probabilities,
        "features": features,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    atomic_write_bytes(data_path, buffer.getvalue())
    atomic_write_json(key_path, key)  # after the data: a key always describes a complete file
    return result
