"""Data sources: a class-folder tree, the homework's ``.npz`` format, or a CSV manifest.

Every source becomes a :class:`Dataset`: the class names, one :class:`ImageRecord` per image
(id, content hash, label) and a list of :class:`SkippedFile` for files that could not be used.
Pixels are decoded on demand by :meth:`Dataset.load_images`, at the size a caller asks for.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble.core.errors import DataError
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import progress
from ensemble.data.images import (
    IMAGE_SUFFIXES,
    DecodedImage,
    UnreadableImage,
    crop_and_resize,
    decode_image,
    pixel_hash,
)

#: Operating-system clutter that is ignored silently when walking a folder.
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "._.DS_Store"})


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image of a data set.

    Attributes:
        id: stable identifier: the path relative to the data root (``"basophil/BA_1.jpg"``), or
            ``"name.npz#17"`` for the 18th image of an ``.npz``.
        content_hash: SHA-256 of the file's bytes (of the pixel array for ``.npz`` images).
        label: class name.
        path: the file on disk, or ``None`` for ``.npz`` images.
        index: position in the ``.npz`` array, or ``None`` for files.
    """

    id: str
    content_hash: str
    label: str
    path: Path | None = None
    index: int | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file that was found but cannot be used, with the reason."""

    id: str
    reason: str


@dataclass
class Dataset:
    """A labelled image collection from any source.

    Attributes:
        root: the folder, ``.npz`` or CSV it was read from.
        classes: class names, in label-index order.
        records: the readable-looking images (bytes read, not yet decoded).
        skipped: files that could not even be read, with reasons. Decoding failures are found
            by :meth:`load_images` and returned from there.
    """

    root: Path
    classes: list[str]
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    _arrays: np.ndarray | None = field(default=None, repr=False)

    @property
    def labels(self) -> np.ndarray:
        """Integer label of every record, indexing :attr:`classes`."""
        index = {name: position for position, name in enumerate(self.classes)}
        return np.array([index[record.label] for record in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Number of records per class, in class order."""
        counts = Counter(record.label for record in self.records)
        return {name: counts.get(name, 0) for name in self.classes}

    def subset(self, keep: Sequence[int] | np.ndarray) -> Dataset:
        """Return a data set with only the records at the given positions (same classes)."""
        records = [self.records[position] for position in keep]
        return Dataset(self.root, list(self.classes), records, list(self.skipped), self._arrays)

    def fingerprint(self) -> str:
        """SHA-256 over the sorted (id, content hash, label) triples: changes if any image does."""
        digest = hashlib.sha256()
        for record in sorted(self.records, key=lambda item: item.id):
            digest.update(f"{record.id}\0{record.content_hash}\0{record.label}\n".encode())
        return digest.hexdigest()

    def decode(self, record: ImageRecord, size: int | None) -> DecodedImage:
        """Decode one record's pixels (see :func:`ensemble.data.images.decode_image`)."""
        if record.index is not None:
            pixels = np.asarray(self._arrays[record.index], dtype=np.uint8)
            digest = pixel_hash(pixels)
            shape = (pixels.shape[1], pixels.shape[0])
            if size is not None:
                pixels = crop_and_resize(pixels, size)
            return DecodedImage(pixels, digest, shape)
        return decode_image(record.path, size)

    def load_images(
        self, size: int, *, workers: int = 4, description: str = "decoding"
    ) -> tuple[np.ndarray, list[str], list[SkippedFile]]:
        """Decode every record at ``size × size``.

        Args:
            size: side length of the returned images.
            workers: decoding threads (PIL releases the GIL while decoding).
            description: label of the progress bar.

        Returns:
            ``(images, pixel_hashes, failures)``: a ``(N, size, size, 3)`` ``uint8`` array in
            record order (zeros where decoding failed), each record's pixel hash (``""`` where
            it failed), and the records that failed with their reasons.
        """
        images = np.zeros((len(self.records), size, size, 3), dtype=np.uint8)
        hashes = [""] * len(self.records)
        failures: list[SkippedFile] = []

        def work(position: int) -> tuple[int, DecodedImage | str]:
            try:
                return position, self.decode(self.records[position], size)
            except UnreadableImage as error:
                return position, str(error)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(work, range(len(self.records)))
            for position, outcome in progress(results, total=len(self.records), desc=description):
                if isinstance(outcome, str):
                    failures.append(SkippedFile(self.records[position].id, outcome))
                else:
                    images[position] = outcome.pixels
                    hashes[position] = outcome.pixel_hash
        return images, hashes, failures


def load_dataset(
    source: Path | str,
    *,
    classes: Sequence[str] | None = None,
    root: Path | str | None = None,
) -> Dataset:
    """Read a data set from a class-folder tree, an ``.npz`` file or a ``path,label`` CSV.

    Args:
        source: a folder ``DIR/<class>/<image>`` (nested sub-folders allowed), an ``.npz`` with
            ``images`` (N×H×W×3 ``uint8``) and ``labels`` (N or N×1), or a ``.csv`` manifest.
        classes: class names. For ``.npz`` they name the integer labels in order (default: a
            sidecar ``<name>.classes.txt`` or ``classes.txt``, one name per line). For folders
            and CSVs they fix the order and must all be present in the data.
        root: for a CSV, the folder its relative paths start from (default: the CSV's folder).

    Returns:
        The data set. Files that cannot be read are in ``Dataset.skipped``.

    Raises:
        DataError: the source is missing, empty, or malformed; the message names the problem.

    Example:
        >>> data = load_dataset("../shared/data/pbc96")  # doctest: +SKIP
        >>> data.classes[:2]  # doctest: +SKIP
        ['basophil', 'eosinophil']
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source not found: {path}. Pass a class folder, an .npz or a .csv.")
    if path.is_dir():
        dataset = _load_folder(path)
    elif path.suffix.lower() == ".npz":
        dataset = _load_npz(path, classes)
    elif path.suffix.lower() == ".csv":
        dataset = _load_csv(path, Path(root) if root else None)
    else:
        raise DataError(
            f"unsupported data source: {path}. Expected a folder, a .npz file or a .csv "
            f"manifest. Received: suffix={path.suffix!r}"
        )
    if classes is not None and path.suffix.lower() != ".npz":
        missing = sorted(set(classes) - set(dataset.classes))
        extra = sorted(set(dataset.classes) - set(classes))
        if missing:
            raise DataError(f"class {missing[0]!r} has no images in {path}. Missing: {missing}")
        if extra:
            raise DataError(f"{path} has classes not in the given list: {extra}")
        dataset.classes = list(classes)
    if not dataset.records:
        raise DataError(f"no images found in {path}")
    return dataset


def _load_folder(root: Path) -> Dataset:
    class_dirs = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_dirs:
        raise DataError(
            f"no class folders in {root}: expected {root}/<class>/<image> (e.g. "
            f"{root}/basophil/cell1.jpg)"
        )
    records: list[ImageRecord] = []
    skipped: list[SkippedFile] = []
    for class_dir in class_dirs:
        found = 0
        for path in _walk_image_files(class_dir):
            relative = path.relative_to(root).as_posix()
            try:
                digest = file_sha256(path)
            except OSError as error:
                skipped.append(SkippedFile(relative, f"cannot read file: {error.strerror}"))
                continue
            records.append(ImageRecord(relative, digest, class_dir.name, path=path))
            found += 1
        if found == 0:
            raise DataError(
                f"class folder {class_dir} has no images (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}). Add images or remove the folder."
            )
    return Dataset(root, [d.name for d in class_dirs], records, skipped)


def _walk_image_files(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted; hidden folders skipped, symlinked folders not followed.

    Not following folder links makes a symlink loop harmless. Hidden *files* with an image
    suffix are kept on purpose: the real PBC data holds a ``.DS_Store`` saved as ``.DS_….jpg``,
    and the audit must see it to report it.
    """
    found: list[Path] = []
    for directory, subdirs, files in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        for name in sorted(files):
            if name in SYSTEM_FILES or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(directory) / name
            if path.is_file():
                found.append(path)
    return found


def _load_npz(path: Path, classes: Sequence[str] | None) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} as .npz: {error}") from None
    if "images" not in archive.files:
        raise DataError(f"{path} has no 'images' array. Found arrays: {sorted(archive.files)}")
    if "labels" not in archive.files:
        raise DataError(f"{path} has no 'labels' array. Found arrays: {sorted(archive.files)}")
    images, labels = archive["images"], archive["labels"]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: 'images' must be N×H×W×3. Received: shape={images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: 'labels' must be N or N×1. Received: shape={labels.shape}")
    if len(labels) != len(images):
        raise DataError(
            f"{path}: {len(images)} images but {len(labels)} labels; they must be equal"
        )
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(
                f"{path}: 'images' must hold 0–255 values. Received: dtype={images.dtype}"
            )
        images = images.astype(np.uint8)
    labels = labels.astype(np.int64)
    names = list(classes) if classes is not None else _sidecar_classes(path, labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(
            f"{path}: labels range {labels.min()}..{labels.max()} "
            f"but {len(names)} class names are given"
        )
    records = []
    for index in range(len(images)):
        digest = hashlib.sha256(np.ascontiguousarray(images[index]).tobytes()).hexdigest()
        records.append(
            ImageRecord(f"{path.name}#{index}", digest, names[labels[index]], index=index)
        )
    return Dataset(path, names, records, [], images)


def _sidecar_classes(path: Path, labels: np.ndarray) -> list[str]:
    for sidecar in (path.with_suffix(".classes.txt"), path.parent / "classes.txt"):
        if sidecar.is_file():
            return [line.strip() for line in sidecar.read_text().splitlines() if line.strip()]
    count = int(labels.max()) + 1 if labels.size else 0
    return [f"class_{index}" for index in range(count)]


def _load_csv(path: Path, root: Path | None) -> Dataset:
    base = root or path.parent
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(
                f"{path} must have a header with columns 'path,label'. "
                f"Received: {reader.fieldnames}"
            )
        rows = list(reader)
    records: list[ImageRecord] = []
    skipped: list[SkippedFile] = []
    for row in rows:
        image_path = Path(row["path"])
        full = image_path if image_path.is_absolute() else base / image_path
        try:
            digest = file_sha256(full)
        except FileNotFoundError:
            hint = "" if root else " (pass --data-root if paths are relative to another folder)"
            raise DataError(f"{path}: listed image not found: {full}{hint}") from None
        except OSError as error:
            skipped.append(SkippedFile(row["path"], f"cannot read file: {error.strerror}"))
            continue
        records.append(ImageRecord(row["path"], digest, row["label"], path=full))
    classes = sorted({record.label for record in records})
    return Dataset(base, classes, records, skipped)
