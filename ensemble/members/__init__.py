"""Members.

One CNN member from its spec to its trained ``model.keras`` — the backbone registry,
member specs and pipelines, the tf.data input and augmentation, the training schedule with
per-epoch checkpoints and resume, teacher–student training, one-vs-rest heads, and the forward
pass that gives a member's probabilities and pooled features.

May import :mod:`ensemble.core`, :mod:`ensemble.data` and :mod:`ensemble.corrupt`.
"""
