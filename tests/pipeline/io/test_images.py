"""Safe image loading: every bad-image kind gets its reject reason; odd modes and EXIF rotation become upright RGB."""
from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import encoded, png_header
from PIL import Image

from cache.durable import sha256_file
from pipeline.io.images import REJECT_REASONS, decode_image, load_image, read_image_bytes


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "images"
    r.mkdir()
    good = Image.new("RGB", (64, 48), (200, 30, 30))
    (r / "good.jpg").write_bytes(encoded(good, "JPEG"))
    jpeg, png = encoded(good, "JPEG"), encoded(good, "PNG")
    (r / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (r / "trunc.png").write_bytes(png[: len(png) // 2])
    (r / "empty.jpg").write_bytes(b"")
    (r / "text.jpg").write_text("this is not an image\n")
    (r / "bomb.png").write_bytes(png_header(20000, 20000))
    (r / "folder.jpg").mkdir()
    (tmp_path / "outside.jpg").write_bytes(jpeg)
    (r / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    return r


@pytest.mark.parametrize("name,reason", [
    ("trunc.jpg", "truncated"), ("trunc.png", "truncated"), ("empty.jpg", "empty"), ("text.jpg", "not_an_image"),
    ("bomb.png", "decompression_bomb"), ("nope.jpg", "missing"), ("folder.jpg", "not_a_file"),
    ("../outside.jpg", "unsafe_path"), ("link.jpg", "unsafe_path"), ("/etc/hostname", "unsafe_path"),
])
def test_bad_image_kinds_are_rejected_with_their_reason(root, name, reason):
    image, why = load_image(root, name)
    assert image is None and why == reason
    assert why in REJECT_REASONS


def test_good_image_and_content_key(root):
    image, why = load_image(root, "good.jpg")
    assert why is None and image.mode == "RGB" and image.size == (64, 48)
    data, path, _ = read_image_bytes(root, "good.jpg")
    import hashlib
    assert sha256_file(path)[0] == hashlib.sha256(data).hexdigest()


def test_decompression_bomb_warning_level_is_rejected_too():
    data = encoded(Image.new("RGB", (40, 40)), "PNG")  # 1600 px: over a 1000 px limit, under 2x (Pillow warns)
    assert decode_image(data, max_pixels=1000) == (None, "decompression_bomb")
    assert decode_image(data, max_pixels=1600)[1] is None


def test_modes_become_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    img, _ = decode_image(encoded(cmyk, "JPEG"))
    assert img.mode == "RGB" and img.getpixel((4, 4))[0] > 200 and img.getpixel((4, 4))[1] < 60

    arr16 = np.full((8, 8), 65535, np.uint16)
    arr16[0, 0] = 257 * 128
    img, _ = decode_image(encoded(Image.fromarray(arr16), "PNG"))
    assert img.mode == "RGB" and img.getpixel((4, 4)) == (255, 255, 255) and img.getpixel((0, 0)) == (128, 128, 128)

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    img, _ = decode_image(encoded(pal, "PNG", transparency=0))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((4, 4)) == (0, 0, 255)

    rgba = Image.new("RGBA", (8, 8), (0, 255, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    img, _ = decode_image(encoded(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((4, 4)) == (0, 255, 0)

    la = Image.new("LA", (8, 8), (100, 255))
    img, _ = decode_image(encoded(la, "PNG"))
    assert img.getpixel((3, 3)) == (100, 100, 100)

    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img, _ = decode_image(buf.getvalue())
    assert img.mode == "RGB" and img.getpixel((4, 4))[0] > 200  # first frame


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out, _ = decode_image(encoded(img, "JPEG", exif=exif))
    assert out.size == (20, 40)
    assert np.asarray(out)[:5, :, 0].mean() > 200  # the white edge is now on top
