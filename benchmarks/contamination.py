"""Seeded contaminated copies of a clean class-folder data set, to measure the audit.

:func:`contaminate` copies clean images into a new folder and injects known problems of every
kind the audit looks for, returning which files carry which problem, so recall and the false
alarm rate can be counted. It reproduces the report's situation: hundreds of copies of two
non-cell pictures spread over all classes, and images with a strong blue cast.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ensemble.data.sources import load_dataset

KINDS = (
    "unreadable",
    "exact_duplicate",
    "near_duplicate",
    "label_conflict",
    "non_cell",
    "colour_cast",
)


@dataclass
class Contamination:
    """What was injected: ``injected[kind]`` lists the ids (paths relative to the root)."""

    root: Path
    clean: list[str] = field(default_factory=list)
    injected: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})


def contaminate(
    source: Path, target: Path, *, per_class: int, per_kind: int, seed: int = 0
) -> Contamination:
    """Build a contaminated copy of ``per_class`` images per class of ``source`` in ``target``.

    Each kind gets ``per_kind`` injected files, each made from a different clean image:
    byte-identical copies; near copies (JPEG re-encoded, resized or shifted by up to 6 px);
    copies filed under another class (label conflicts); unreadable files (empty, truncated,
    text or a ``.DS_Store`` with an image name); strongly blue-cast images (channel gains with
    blue/red ratio 1.45–2.2, or a 30–50 % blend towards blue); non-cell pictures (copies of two
    photographs spread over all classes, plus distinct drawings and photo crops).
    """
    rng = np.random.default_rng(seed)
    dataset = load_dataset(source)
    result = Contamination(Path(target))
    by_class = {name: [r for r in dataset.records if r.label == name] for name in dataset.classes}
    pools = {}
    for name, records in by_class.items():
        chosen = rng.choice(len(records), min(len(records), per_class * 2), replace=False)
        pools[name] = [records[i] for i in chosen]
    clean, spare = [], []
    for name in dataset.classes:
        clean += pools[name][:per_class]
        spare += pools[name][per_class:]
    for record in clean:
        _copy(record.path, result.root / record.id)
        result.clean.append(record.id)
    rng.shuffle(spare)
    sources = iter(spare)
    classes = list(dataset.classes)

    def new_id(label: str, stem: str, suffix: str = ".jpg") -> str:
        return f"{label}/{stem}_{len(sum(result.injected.values(), []))}{suffix}"

    for index in range(per_kind):
        base = clean[index % len(clean)]
        image_id = new_id(base.label, "copy", Path(base.id).suffix)
        _copy(base.path, result.root / image_id)
        result.injected["exact_duplicate"].append(image_id)
    for index in range(per_kind):
        base = clean[(index + per_kind) % len(clean)]
        pixels = np.asarray(Image.open(base.path).convert("RGB"))
        image_id = new_id(base.label, "near")
        _save(_near_copy(pixels, index, rng), result.root / image_id)
        result.injected["near_duplicate"].append(image_id)
    for index in range(per_kind):
        base = clean[(index + 2 * per_kind) % len(clean)]
        other = classes[(classes.index(base.label) + 1 + index % (len(classes) - 1)) % len(classes)]
        image_id = new_id(other, "conflict", Path(base.id).suffix)
        _copy(base.path, result.root / image_id)
        result.injected["label_conflict"].append(image_id)
    for index in range(per_kind):
        label = classes[index % len(classes)]
        image_id = new_id(label, ".DS_bad" if index % 4 == 3 else "bad")
        (result.root / image_id).write_bytes(_unreadable_bytes(index, clean[index].path, rng))
        result.injected["unreadable"].append(image_id)
    for _ in range(per_kind):
        record = next(sources)
        pixels = np.asarray(Image.open(record.path).convert("RGB"))
        image_id = new_id(record.label, "cast")
        _save(blue_cast(pixels, rng), result.root / image_id)
        result.injected["colour_cast"].append(image_id)
    pictures = non_cell_pictures(rng, count=max(per_kind // 3, 2))
    for index in range(per_kind):
        label = classes[index % len(classes)]
        # Two thirds are copies of two pictures (the report's case), the rest are distinct.
        picture = (
            pictures[index % 2]
            if index < 2 * per_kind // 3
            else pictures[2 + index % (len(pictures) - 2)]
        )
        image_id = new_id(label, "noncell")
        _save(picture, result.root / image_id)
        result.injected["non_cell"].append(image_id)
    return result


def blue_cast(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong blue cast: channel gains (blue/red 1.45–2.2) or a 30–50 % blend towards blue."""
    image = pixels.astype(np.float32)
    if rng.random() < 0.5:
        ratio = rng.uniform(1.45, 2.2)
        red = rng.uniform(0.7, 0.85)
        gains = np.array([red, rng.uniform(red, 1.0), min(red * ratio, 1.6)])
        image = image * gains
    else:
        strength = rng.uniform(0.30, 0.50)
        image = image * (1 - strength) + np.array([40.0, 70.0, 255.0]) * strength
    return np.clip(image, 0, 255).astype(np.uint8)


def non_cell_pictures(rng: np.random.Generator, count: int, size: int = 96) -> list[np.ndarray]:
    """Pictures that are not blood smears: photo crops, drawings, text, flat colours, noise."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    pictures = []
    for index in range(count):
        kind = index % 5
        if kind in (0, 1):
            photo = photos[index % 2]
            side = int(rng.integers(120, 400))
            top = int(rng.integers(0, photo.shape[0] - side))
            left = int(rng.integers(0, photo.shape[1] - side))
            crop = Image.fromarray(photo[top : top + side, left : left + side])
            pictures.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
        elif kind == 2:
            canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(rng.integers(2, 8))):
                x0, x1 = sorted(int(v) for v in rng.integers(0, size, 2))
                y0, y1 = sorted(int(v) for v in rng.integers(0, size, 2))
                draw.rectangle(
                    [x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
                )
            draw.text((8, size // 2), "SAMPLE", fill=(0, 0, 0))
            pictures.append(np.asarray(canvas))
        elif kind == 3:
            pictures.append(np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8))
        else:
            coarse = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
            smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
            pictures.append(np.asarray(smooth))
    return pictures


def _near_copy(pixels: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    kind = index % 3
    if kind == 0:  # re-encoded at low quality
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=int(rng.integers(40, 80)))
        return np.asarray(Image.open(buffer).convert("RGB"))
    if kind == 1:  # down- and up-sized
        side = int(rng.integers(48, 80))
        small = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(small.resize(pixels.shape[:2][::-1], Image.Resampling.BILINEAR))
    dy, dx = (int(v) for v in rng.integers(-6, 7, 2))  # shifted, edges repeated
    padded = np.pad(pixels, ((8, 8), (8, 8), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    return padded[8 + dy : 8 + dy + height, 8 + dx : 8 + dx + width]


def _unreadable_bytes(index: int, image_path: Path, rng: np.random.Generator) -> bytes:
    kind = index % 4
    if kind == 0:
        return b""
    if kind == 1:
        data = image_path.read_bytes()
        return data[: int(len(data) * rng.uniform(0.2, 0.6))]
    if kind == 2:
        return b"this is a text file, not an image\n" * 5
    return b"\x00\x00\x00\x01Bud1" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _save(pixels: np.ndarray, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target, "JPEG", quality=95)
