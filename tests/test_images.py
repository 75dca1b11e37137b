import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ensemble.data.images import MAX_PIXELS, UnreadableImage, decode_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width=40, height=30) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6, y * 8, (x + y) * 3], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "1"],
)
def test_every_mode_becomes_rgb_uint8(mode):
    if mode == "I;16":
        image = Image.fromarray(gradient()[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gradient()).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    decoded = decode_image(encode(image, fmt), size=24)
    assert decoded.pixels.shape == (24, 24, 3)
    assert decoded.pixels.dtype == np.uint8


def test_sixteen_bit_scaled_not_clipped():
    values = np.full((8, 8), 40000, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"))
    assert abs(int(decoded.pixels[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_alpha_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert (decoded.pixels == 255).all()


def test_palette_with_transparency():
    image = Image.fromarray(gradient()).convert("P")
    image.info["transparency"] = 0
    assert decode_image(encode(image, "PNG", transparency=0)).pixels.shape == (30, 40, 3)


def test_exif_orientation_applied():
    image = Image.fromarray(gradient(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.original_size == (20, 40)


def test_centre_crop_then_resize():
    pixels = np.zeros((30, 90, 3), dtype=np.uint8)
    pixels[:, 30:60] = 255  # the centre square is white, the sides black
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), size=10)
    assert decoded.pixels.min() > 250


def test_one_pixel_image():
    decoded = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), size=8)
    assert decoded.pixels.shape == (8, 8, 3)
    assert tuple(decoded.pixels[4, 4]) == (10, 20, 30)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels but holds almost nothing: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_image_refused_without_allocating():
    with pytest.raises(UnreadableImage, match="image too large"):
        decode_image(huge_png_header(20000, 20000), size=96)
    assert 20000 * 20000 > MAX_PIXELS
    with pytest.raises(UnreadableImage, match="image too large: 9000x9000 pixels exceeds"):
        decode_image(huge_png_header(9000, 9000), size=96)


def test_huge_jpeg_is_downsampled_in_draft_mode(monkeypatch):
    import ensemble.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    data = encode(Image.fromarray(np.tile(gradient(), (10, 10, 1))), "JPEG")  # 400×300
    assert images.decode_image(data, size=16).pixels.shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "empty file"),
        (b"just some text\n" * 10, "not an image"),
        (b"\x00\x00\x00\x01Bud1" + bytes(200), "not an image"),
    ],
)
def test_unreadable_payloads(payload, match):
    with pytest.raises(UnreadableImage, match=match):
        decode_image(payload)


def test_truncated_jpeg():
    data = encode(Image.fromarray(np.tile(gradient(), (3, 3, 1))), "JPEG")
    with pytest.raises(UnreadableImage, match="truncated|corrupt"):
        decode_image(data[: len(data) // 3])


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage, match="directory"):
        decode_image(tmp_path)


def test_pixel_hash_equal_for_lossless_resave():
    image = Image.fromarray(gradient())
    assert (
        decode_image(encode(image, "PNG")).pixel_hash
        == decode_image(encode(image, "BMP")).pixel_hash
    )
