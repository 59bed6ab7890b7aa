"""Reading a greyscale image file: a bad or hostile file is an error naming the file, never a traceback.

Used wherever a file becomes a frame (the simulated camera, `enroll --images`, `eval`, the simulator's
people). A header that claims an enormous size is refused before anything is decoded, so a 60000x60000
PNG of a few bytes cannot make a unit allocate gigabytes.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import ImageFileError

MAX_PIXELS = 40_000_000  # far above any camera frame or photo the project reads (1600x1200 = 1.9 MP)
_JPEG_SIZE_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def claimed_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) that a PNG, JPEG or BMP header claims, or None when the header does not say."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(head):
            if head[i] != 0xFF:
                return None
            marker, length = head[i + 1], struct.unpack(">H", head[i + 2:i + 4])[0]
            if marker in _JPEG_SIZE_MARKERS:
                height, width = struct.unpack(">HH", head[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def read_grey(path: Path | str) -> np.ndarray:
    """The file as a uint8 (H, W) greyscale image; ImageFileError saying what is wrong with it otherwise."""
    import cv2

    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(65536)
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    size = claimed_size(head)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageFileError(f"{path}: claims {size[0]}x{size[1]} pixels, more than the {MAX_PIXELS:,} "
                             "any camera frame or hand photo has; not read")
    try:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "decoder error"
        raise ImageFileError(f"{path} is not a readable image ({reason})") from None
    if image is None or image.size == 0:
        raise ImageFileError(f"{path} is not an image that can be read (PNG, JPEG, BMP, PGM or TIFF expected)")
    return image
