"""Teacher–student training: a student matches its teachers' probabilities on the clean image.

A member spec with a ``[distill]`` table names one or more earlier members of its pipeline as
teachers. Before training, each teacher predicts every *clean* training image once (optionally
averaged over the 8 dihedral views); the student then sees the same image with the
augmentation its spec draws (dihedral view, acquisition corruption, zoom) and learns

    (1 − weight) · cross-entropy(label, student)
    + weight · T² · cross-entropy(softmax(log teacher / T), softmax(log student / T))

so the target stays what the cell *is*, whatever the acquisition did to it ("a good teacher is
patient and consistent", Beyer et al., CVPR 2022; Hinton et al. 2015 for the temperature).

The label and the teacher's tempered probabilities travel together as one ``(N, 2K)`` target;
:class:`DistillationLoss` and :func:`label_accuracy` split them again. Both are registered with
Keras, so a checkpoint saved with them compiles again on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="ensemble")
class DistillationLoss(keras.losses.Loss):
    """Cross-entropy to the label mixed with tempered cross-entropy to the teachers.

    Args:
        n_classes: K; ``y_true`` is ``(N, 2K)``: the one-hot label, then the teachers' tempered
            probabilities.
        weight: share of the teacher term (0 = labels only, 1 = teachers only).
        temperature: T; both distributions are softened by it, and the teacher term is scaled
            by T² so that its gradients keep their size.
        label_smoothing: applied to the one-hot label, as in plain training.
    """

    def __init__(
        self,
        n_classes: int,
        weight: float = 0.5,
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        name: str = "distillation",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        """Per-image loss of the student's probabilities ``y_pred`` against the packed target."""
        labels = y_true[:, : self.n_classes]
        teacher = y_true[:, self.n_classes :]
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / self.n_classes
        log_student = ops.log(ops.clip(y_pred, _EPSILON, 1.0))
        label_term = -ops.sum(labels * log_student, axis=-1)
        tempered = ops.log_softmax(log_student / self.temperature, axis=-1)
        teacher_term = -ops.sum(teacher * tempered, axis=-1) * self.temperature**2
        return (1.0 - self.weight) * label_term + self.weight * teacher_term

    def get_config(self) -> dict:
        """The constructor's arguments (for saving the compiled model)."""
        config = super().get_config()
        config.update(
            n_classes=self.n_classes,
            weight=self.weight,
            temperature=self.temperature,
            label_smoothing=self.label_smoothing,
        )
        return config


@keras.saving.register_keras_serializable(package="ensemble")
def label_accuracy(y_true, y_pred):
    """Accuracy against the label half of a packed ``(N, 2K)`` target."""
    n_classes = ops.shape(y_pred)[-1]
    labels = ops.argmax(y_true[:, :n_classes], axis=-1)
    return ops.cast(ops.equal(labels, ops.argmax(y_pred, axis=-1)), "float32")


def accuracy_metric():
    """The training accuracy shown per epoch, computed on the label half of the target."""
    return keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the teachers' probabilities softened (T > 1) or sharpened."""
    logits = np.log(np.clip(probabilities, _EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def teacher_probabilities(
    models: Sequence, images: Sequence[np.ndarray], *, tta: bool, batch_size: int = 256
) -> np.ndarray:
    """The teachers' mean class probabilities on clean images.

    Args:
        models: the teachers' Keras models.
        images: for each teacher, the training images at its input size (same order).
        tta: average each teacher over the 8 dihedral views of every image.
        batch_size: images per forward pass.

    Returns:
        ``(N, K)`` float32 probabilities, averaged over the teachers (and views).
    """
    from ensemble.members.inputs import dihedral_views, inference_dataset

    total = None
    for model, teacher_images in zip(models, images, strict=True):
        views = dihedral_views(teacher_images) if tta else [teacher_images]
        for view in views:
            probabilities = model.predict(inference_dataset(view, batch_size), verbose=0)
            total = probabilities if total is None else total + probabilities
    return (total / (len(models) * (8 if tta else 1))).astype(np.float32)


def packed_targets(one_hot: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """The ``(N, 2K)`` training target: one-hot label, then the teachers' tempered probabilities."""
    if one_hot.shape != teacher.shape:
        raise ValueError(
            f"teacher probabilities {teacher.shape} do not match the labels {one_hot.shape}"
        )
    return np.concatenate([one_hot, teacher], axis=1).astype(np.float32)
