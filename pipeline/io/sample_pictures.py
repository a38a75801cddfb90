"""Pictures of the generated sample: a type cue (colour + shape) or a neutral scene, a cue too small to see but in a
detector's close-up, crop boxes around the main object, and encoding to JPEG/PNG bytes. Deterministic by the rng.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["IMAGE_SIZE", "TINY_CUE_RADIUS", "TYPE_STYLE", "draw_scene", "closeup", "crop_boxes", "encode_image"]

IMAGE_SIZE = 160  # px of an original (small: generation takes seconds)
TINY_CUE_RADIUS = 2  # px at IMAGE_SIZE: the cue object in an original whose cue is in the crops (~noise at 224 px)

# type -> (dominant RGB colour, shape): very distinct so even a random-init frozen encoder separates them
TYPE_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "PER": ((210, 40, 40), "circle"),
    "LOC": ((40, 170, 60), "triangle"),
    "ORG": ((40, 70, 210), "square"),
    "MISC": ((235, 200, 30), "star"),
}


def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, colour: tuple[int, int, int]) -> None:
    """Draw a type shape of radius r centred at (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "star":
        ang = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon([(cx + float(rr * np.cos(a)), cy + float(rr * np.sin(a))) for a, rr in zip(ang, rad)], fill=colour)


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Add uniform pixel noise (+-18 per channel)."""
    # shape: (h, w, 3)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-18, 19, (img.height, img.width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def draw_scene(cue: str, rng: np.random.Generator, tiny: str | None = None
          ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """An IMAGE_SIZE² picture with the type cue (or a neutral scene) and the bounding box of its main object.

    cue: a type (tinted background + large shape) or "neutral" (grey scene with lines). tiny: a type drawn as a
    TINY_CUE_RADIUS object into the neutral scene (its cue is in the crops); the box is then that object's.
    """
    s = IMAGE_SIZE
    if cue in TYPE_STYLE:
        base = np.array(TYPE_STYLE[cue][0])
        bg = base * 0.45 + 255 * 0.55 + rng.integers(-20, 21, 3)
        fg = base + rng.integers(-20, 21, 3)
        shape = TYPE_STYLE[cue][1]
    else:
        grey = rng.integers(90, 170)
        bg = np.array([grey, grey, grey]) + rng.integers(-10, 11, 3)
        fg = np.array([grey + 40, grey + 25, grey]) + rng.integers(-10, 11, 3)
        shape = "lines"
    img = Image.new("RGB", (s, s), tuple(int(v) for v in np.clip(bg, 0, 255)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):  # small grey distractors
        x, y, w = (int(v) for v in rng.integers(0, s - 20, 2).tolist() + [int(rng.integers(8, 24))])
        g = int(rng.integers(60, 200))
        draw.rectangle([x, y, x + w, y + w // 2 + 4], fill=(g, g, g))
    r = int(rng.integers(int(s * 0.22), int(s * 0.32)))
    cx, cy = (int(v) for v in rng.integers(r + 4, s - r - 4, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    colour = tuple(int(v) for v in np.clip(fg, 0, 255))
    if shape == "lines":
        for _ in range(6):
            pts = [tuple(int(v) for v in rng.integers(0, s, 2)) for _ in range(2)]
            draw.line(pts, fill=colour, width=int(rng.integers(2, 6)))
    else:
        _shape(draw, shape, cx, cy, r, colour)
    if tiny is not None:  # a far-away cue object: a few pixels here, only a crop (a zoomed detection) shows it
        t = TINY_CUE_RADIUS
        tx, ty = (int(v) for v in rng.integers(t + 8, s - t - 8, 2))
        tfg = np.array(TYPE_STYLE[tiny][0]) + rng.integers(-20, 21, 3)
        _shape(draw, TYPE_STYLE[tiny][1], tx, ty, t, tuple(int(v) for v in np.clip(tfg, 0, 255)))
        box = (tx - t, ty - t, tx + t, ty + t)
    return _noise(img, rng), box


def closeup(cue: str | None, size: int, rng: np.random.Generator) -> Image.Image:
    """A size² crop as a detector returns it at full resolution: the cue object of type `cue` filling most of a
    grey surround, or (cue None) a neutral grey object (a distractor) on grey."""
    grey = int(rng.integers(90, 170))
    bg = np.array([grey, grey, grey]) + rng.integers(-6, 7, 3)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in np.clip(bg, 0, 255)))
    draw = ImageDraw.Draw(img)
    r = int(size * rng.uniform(0.36, 0.48))
    cx, cy = (int(v) for v in rng.integers(r, size - r + 1, 2))
    if cue is None:
        g = int(rng.integers(60, 200))
        w, h = int(r * rng.uniform(1.2, 2.0)), int(r * rng.uniform(0.8, 1.6))
        draw.rectangle([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=(g, g, g))
    else:
        fg = np.array(TYPE_STYLE[cue][0]) + rng.integers(-20, 21, 3)
        _shape(draw, TYPE_STYLE[cue][1], cx, cy, r, tuple(int(v) for v in np.clip(fg, 0, 255)))
    return _noise(img, rng)


def crop_boxes(box: tuple[int, int, int, int], n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """The main object's box (with a jittered margin) first, then random regions (still showing the type colour)."""
    s = IMAGE_SIZE
    m = int(rng.integers(2, 12))
    boxes = [(max(0, box[0] - m), max(0, box[1] - m), min(s, box[2] + m), min(s, box[3] + m))]
    for _ in range(n - 1):
        w = int(rng.integers(40, 100))
        x, y = (int(v) for v in rng.integers(0, s - w, 2))
        boxes.append((x, y, x + w, y + w))
    return boxes


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    # no EXIF or time stamps: the same pixels give the same bytes on every run
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()
