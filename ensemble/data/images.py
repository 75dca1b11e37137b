"""Decode any PIL-readable image file into an RGB ``uint8`` array, or say why it cannot be read.

Everything that reads pixels (the loader, the audit, ``predict``) goes through
:func:`decode_image`, so that every command treats odd files the same way: grayscale, palette,
alpha, 16-bit, CMYK and EXIF-rotated images become plain RGB; zero-byte, truncated, non-image
and enormous files raise :class:`UnreadableImage` with a reason a person can act on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ensemble.core.fileio import atomic_write_bytes

#: File name endings that are treated as images when walking a folder.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})

#: Largest image (width × height) decoded at full size. 50 megapixels is about 150 MB as RGB;
#: larger JPEGs are decoded at a reduced scale (PIL's draft mode), other formats are refused,
#: which also stops PNG decompression bombs before they allocate.
MAX_PIXELS = 50_000_000


class UnreadableImage(Exception):
    """A file that is not a usable image; ``str(error)`` is the reason."""


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image.

    Attributes:
        pixels: ``(size, size, 3)`` ``uint8`` RGB array (or the native size if no size was asked).
        pixel_hash: SHA-256 of the full-resolution RGB pixels before resizing, so that two files
            with the same picture (a byte copy or a lossless re-save) share it.
        original_size: ``(width, height)`` of the file as stored.
    """

    pixels: np.ndarray
    pixel_hash: str
    original_size: tuple[int, int]


def decode_image(source: Path | bytes, size: int | None = None) -> DecodedImage:
    """Decode an image file into RGB pixels, centre-cropped to a square and resized.

    The crop-then-resize matches how the 96×96 PBC copy was made from the 360×363 originals, so
    a full-size image and its 96×96 copy look alike to a model.

    Args:
        source: a file path, or the file's bytes.
        size: output side length in pixels; ``None`` keeps the native size (no crop).

    Returns:
        The decoded image with its pixel hash.

    Raises:
        UnreadableImage: the file is empty, not an image, truncated or too large.

    Example:
        >>> decode_image(Path("cell.jpg"), size=96).pixels.shape  # doctest: +SKIP
        (96, 96, 3)
    """
    data = source if isinstance(source, bytes) else _read_bytes(source)
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image = _limit_size(image, size)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (no known image format)") from None
    except Image.DecompressionBombError:
        # PIL refuses at open() what is far beyond its own limit, before reading pixel data.
        raise UnreadableImage(
            f"image too large: over {Image.MAX_IMAGE_PIXELS:,} pixels (possible decompression bomb)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage(f"corrupt or truncated image: {error}") from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UnreadableImage("image has no pixels")
    digest = pixel_hash(rgb)
    original = (rgb.shape[1], rgb.shape[0])
    if size is not None:
        rgb = crop_and_resize(rgb, size)
    return DecodedImage(pixels=rgb, pixel_hash=digest, original_size=original)


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-256 of an image's shape and RGB pixels: equal for equal pictures in any file format."""
    digest = hashlib.sha256(repr(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def crop_and_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an ``(H, W, 3)`` array to a square and resize it to ``size × size`` (Lanczos)."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def crop_and_resize_all(images, size: int) -> np.ndarray:
    """Every image (``(H, W, 3)``; sizes may differ) through :func:`crop_and_resize`, stacked."""
    return np.stack([crop_and_resize(np.asarray(image, np.uint8), size) for image in images])


def save_png(rgb: np.ndarray, path: Path | str) -> None:
    """Write an RGB ``uint8`` ``(H, W, 3)`` array to ``path`` as a PNG, atomically (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, "PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise UnreadableImage("is a directory, not a file") from None
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror or error}") from None


def _limit_size(image: Image.Image, size: int | None) -> Image.Image:
    width, height = image.size
    if width * height <= MAX_PIXELS:
        return image
    if image.format == "JPEG":
        # Draft mode makes libjpeg decode at 1/2, 1/4 or 1/8 scale: no full-size allocation.
        target = size or 1024
        image.draft("RGB", (target, target))
        width, height = image.size
        if width * height <= MAX_PIXELS:
            return image
    raise UnreadableImage(
        f"image too large: {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,}"
    )


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min(initial=0)), float(values.max(initial=1))
        gray = ((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent regions become white, the colour of an empty smear background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
