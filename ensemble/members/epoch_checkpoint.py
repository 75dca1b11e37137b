"""The per-epoch work of training, as a Keras callback: evaluate, checkpoint, report a line.

After every epoch :class:`EpochCheckpoint` evaluates the model on the validation images,
saves the best model and the last epoch's model (with its optimizer) atomically, writes the
training state, and prints one line. A process killed at any moment, even SIGKILL mid-save,
leaves only complete files; a restart loads ``checkpoint/last.keras`` and continues with
``fit(initial_epoch=state["epoch"])``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras

from ensemble.core.fileio import atomic_write_json, save_model_atomically
from ensemble.members.layout import MemberDir


class EpochCheckpoint(keras.callbacks.Callback):
    """Evaluate, save atomically, stop early and print one line after every epoch.

    Args:
        name: the member's name, for the progress line.
        evaluate: model → ``(val_accuracy, val_macro_f1)``.
        n_train: training images per epoch (for images per second).
        member_dir: the member's directory (``best.keras``, ``checkpoint/``).
        state: the training state, updated in place and written to ``checkpoint/state.json``:
            ``epoch``, ``best_val_accuracy``, ``best_epoch``, ``stale_epochs``, ``history``.
        total_epochs: epochs of the whole schedule (for the line and the time left).
        phase_of: epoch index → phase name recorded in the history.
        patience: stop after this many epochs without improvement; 0 never stops early.
        min_delta: smallest improvement of validation accuracy that counts.
        verbose: 1 prints a line per epoch on stderr, 0 nothing.
        stop_after_epochs: stop after this many epochs in this ``fit`` call (as if killed).

    Attributes:
        interrupted: training stopped because of ``stop_after_epochs`` (member unfinished).
        stopped_early: training stopped because of ``patience`` (member finished).
    """

    def __init__(
        self,
        *,
        name: str,
        evaluate: Callable,
        n_train: int,
        member_dir: Path,
        state: dict,
        total_epochs: int,
        phase_of: Callable[[int], str],
        patience: int = 0,
        min_delta: float = 0.0,
        verbose: int = 1,
        stop_after_epochs: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.evaluate = evaluate
        self.n_train = n_train
        self.member_dir = Path(member_dir)
        self.state = state
        self.total_epochs = total_epochs
        self.phase_of = phase_of
        self.patience = patience
        self.min_delta = min_delta
        self.verbose = verbose
        self.stop_at = None if stop_after_epochs is None else state["epoch"] + stop_after_epochs
        self.interrupted = False
        self.stopped_early = False
        self._began = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        """Start the epoch's clock."""
        self._began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        """Evaluate, save, decide whether to stop, print the line."""
        record = self._record(epoch, logs or {})
        self._save(record)
        if self.verbose:
            print(self._line(record), file=sys.stderr, flush=True)
        if self.patience and self.state["stale_epochs"] >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True
        if self.stop_at is not None and self.state["epoch"] >= self.stop_at:
            self.interrupted = True
            self.model.stop_training = True

    def _record(self, epoch: int, logs: dict) -> dict:
        seconds = time.perf_counter() - self._began
        val_accuracy, val_f1 = self.evaluate(self.model)
        return {
            "epoch": epoch + 1,
            "phase": self.phase_of(epoch),
            "loss": float(logs.get("loss", float("nan"))),
            "accuracy": float(logs.get("accuracy", float("nan"))),
            "val_accuracy": val_accuracy,
            "val_macro_f1": val_f1,
            "seconds": round(seconds, 2),
            "images_per_second": round(self.n_train / seconds, 1),
            "eval_seconds": round(time.perf_counter() - self._began - seconds, 2),
        }

    def _save(self, record: dict) -> None:
        state = self.state
        state["history"].append(record)
        state["epoch"] = record["epoch"]
        if record["val_accuracy"] > state["best_val_accuracy"] + self.min_delta:
            state["best_val_accuracy"] = record["val_accuracy"]
            state["best_epoch"] = record["epoch"]
            state["stale_epochs"] = 0
            save_model_atomically(self.model, MemberDir(self.member_dir).best)
        else:
            state["stale_epochs"] += 1
        saving = time.perf_counter()
        save_model_atomically(self.model, MemberDir(self.member_dir).checkpoint)
        record["save_seconds"] = round(time.perf_counter() - saving, 2)
        atomic_write_json(MemberDir(self.member_dir).state, state)

    def _line(self, record: dict) -> str:
        """``name epoch 3/28: loss …, accuracy …, val accuracy …, 245 img/s, ~17 min left``."""
        recent = self.state["history"][-3:]
        per_epoch = sum(row["seconds"] + row["eval_seconds"] for row in recent) / len(recent)
        left = (self.total_epochs - record["epoch"]) * per_epoch
        return (
            f"  {self.name} epoch {record['epoch']}/{self.total_epochs}: "
            f"loss {record['loss']:.4f}, accuracy {record['accuracy']:.4f}, "
            f"val accuracy {record['val_accuracy']:.4f}, macro-F1 {record['val_macro_f1']:.4f}, "
            f"{record['images_per_second']:.0f} img/s, {record['seconds']:.0f} s, "
            f"~{left / 60:.0f} min left"
        )
