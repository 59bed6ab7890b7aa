"""Image files become frames only through images.read_grey: every bad file is a message naming it."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from vendor_node.errors import ImageFileError
from vendor_node.images import MAX_PIXELS, claimed_size, read_grey


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_header_claiming_60000_by_60000_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(60000, 60000))
    with pytest.raises(ImageFileError, match=r"bomb.png: claims 60000x60000 pixels"):
        read_grey(path)


@pytest.mark.parametrize("name, data, fragment", [
    ("notes.txt", b"not a picture", "is not an image that can be read"),
    ("cut.png", png_claiming(10, 10)[:30], "is not a"),
    ("empty.jpg", b"", "is not an image that can be read"),
])
def test_unreadable_files_name_themselves(tmp_path, name, data, fragment):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageFileError) as info:
        read_grey(path)
    assert name in str(info.value) and fragment in str(info.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ImageFileError, match="cannot read"):
        read_grey(tmp_path / "gone.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_real_images_read_and_their_headers_are_understood(tmp_path, suffix):
    path = tmp_path / f"frame{suffix}"
    image = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    cv2.imwrite(str(path), image)
    assert read_grey(path).shape == (48, 64)
    assert claimed_size(path.read_bytes()[:65536]) == (64, 48)
    assert 64 * 48 < MAX_PIXELS


def test_eval_reports_a_hostile_png_and_goes_on(tmp_path, capsys, caplog):
    import json

    from test_evaluation import _drawn_dataset
    from vendor_node.cli import main

    data = tmp_path / "hands"
    _drawn_dataset(data, people=3, samples=2, size=(480, 640))
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    (first / "zz-bomb.png").write_bytes(png_claiming(60000, 60000))
    report_path = tmp_path / "report.json"
    assert main(["eval", "--dataset", str(data), "--enroll", "1", "--report", str(report_path)]) == 0
    assert "zz-bomb.png: claims 60000x60000 pixels" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads(report_path.read_text())["verification"]["genuine"] == 3
