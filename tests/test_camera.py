"""The camera adapters: picamera2 driven through a stand-in class (no Pi needed), and the sim camera."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from vendor_node.devices.camera import Picamera2Camera, SimCamera, luminance, open_camera
from vendor_node.config import Config
from vendor_node.errors import CameraError


class FakePicamera2:
    """Records what the adapter asks of picamera2; delivers YUV420 buffers or stalls."""

    instances: list = []

    def __init__(self, stall=False, fail_open=False):
        if fail_open:
            raise RuntimeError("Camera __init__ sequence did not complete")
        self.stall = stall
        self.config = None
        self.started = self.stopped = self.closed = False
        self.waits = []
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, **kwargs):
        return kwargs

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, name="main", wait=None):
        assert wait is False, "the adapter must not block without a timeout"
        return ("job", name)

    def wait(self, job, timeout=None):
        self.waits.append(timeout)
        if self.stall:
            raise TimeoutError()
        w, h = self.config["main"]["size"]
        stride = w + 32  # padded rows, as libcamera delivers them
        buffer = np.zeros((h * 3 // 2, stride), np.uint8)
        buffer[:h, :w] = 100  # luminance
        buffer[h:, :] = 200  # chroma planes
        return buffer

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True


def test_picamera2_stream_is_greyscale_with_fixed_exposure():
    cam = Picamera2Camera(320, 240, 4000, 2.0, 0.5, picamera2_class=FakePicamera2)
    fake = FakePicamera2.instances[-1]
    assert fake.started
    assert fake.config["main"] == {"size": (320, 240), "format": "YUV420"}
    controls = fake.config["controls"]
    assert controls["AeEnable"] is False and controls["ExposureTime"] == 4000 and controls["AnalogueGain"] == 2.0
    frame = cam.capture()
    assert frame.shape == (240, 320) and frame.dtype == np.uint8 and (frame == 100).all()
    assert frame.flags["C_CONTIGUOUS"]
    assert fake.waits == [0.5]
    with cam:
        pass
    assert fake.stopped and fake.closed


def test_picamera2_frame_not_arriving_in_time_is_a_camera_error():
    cam = Picamera2Camera(320, 240, 4000, 2.0, 0.2, picamera2_class=lambda: FakePicamera2(stall=True))
    with pytest.raises(CameraError, match="no camera frame within 0.20 s"):
        cam.capture()
    with pytest.raises(CameraError):
        cam.check()
    cam.close()
    with pytest.raises(CameraError, match="closed"):
        cam.capture()


def test_picamera2_that_cannot_open_is_a_camera_error():
    with pytest.raises(CameraError, match="could not be opened"):
        Picamera2Camera(320, 240, 4000, 2.0, 0.2, picamera2_class=lambda: FakePicamera2(fail_open=True))


def test_missing_picamera2_names_the_package():
    cfg = Config()  # hardware "pi" on a laptop: picamera2 is not installed here
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 is installed")
    except ImportError:
        pass
    with pytest.raises(CameraError, match="python3-picamera2"):
        open_camera(cfg)


def test_luminance_rejects_a_buffer_of_the_wrong_size():
    with pytest.raises(CameraError, match="expected YUV420"):
        luminance(np.zeros((10, 10), np.uint8), 320, 240)


def test_sim_camera_plays_presented_frames_first_then_times_out():
    with SimCamera() as cam:
        a, b = np.full((4, 5), 1, np.uint8), np.full((4, 5), 2, np.uint8)
        cam.present(a)
        cam.present(b)
        assert cam.capture(0.1)[0, 0] == 1 and cam.capture(0.1)[0, 0] == 2
        started = time.monotonic()
        with pytest.raises(CameraError, match="no camera frame"):
            cam.capture(0.05)
        assert time.monotonic() - started < 1.0


def test_sim_camera_waits_for_a_frame_presented_from_another_thread():
    cam = SimCamera()
    threading.Timer(0.05, cam.present, args=(np.zeros((3, 3), np.uint8),)).start()
    assert cam.capture(2.0).shape == (3, 3)


def test_sim_camera_refuses_frames_that_are_not_greyscale_uint8():
    with pytest.raises(CameraError, match="uint8"):
        SimCamera().present(np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(CameraError, match="uint8"):
        SimCamera().present(np.zeros((3, 3), np.float32))


def test_sim_camera_fault_and_repair():
    cam = SimCamera()
    cam.fail("unplugged")
    with pytest.raises(CameraError, match="unplugged"):
        cam.capture(0.01)
    with pytest.raises(CameraError, match="unplugged"):
        cam.check()
    cam.repair()
    cam.check()


def test_sim_camera_plays_an_image_folder_in_a_loop(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((6, 8), 10 * (i + 1), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = Config().replace(unit={"hardware": "sim"}, camera={"sim_folder": tmp_path})
    with open_camera(cfg) as cam:
        assert [int(cam.capture()[0, 0]) for _ in range(3)] == [10, 20, 10]


def test_sim_camera_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(CameraError, match="no such folder"):
        SimCamera(tmp_path / "missing")
    with pytest.raises(CameraError, match="holds no images"):
        SimCamera(tmp_path)


def _fake_picamera2_package(tmp_path, monkeypatch, body: str) -> None:
    """A `picamera2` package on sys.path whose import runs ``body`` (what a broken install does)."""
    package = tmp_path / "fake_site" / "picamera2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(__import__("sys").modules, "picamera2", raising=False)


def test_picamera2_built_against_another_numpy_names_the_cause_and_the_fix(tmp_path, monkeypatch):
    # the message simplejpeg raises when a pip numpy 2 shadows the apt numpy (picamera2 issues 1088, 1211)
    _fake_picamera2_package(tmp_path, monkeypatch, "raise ValueError('numpy.dtype size changed, may indicate "
                                                   "binary incompatibility. Expected 96 from C header, got 88 "
                                                   "from PyObject')\n")
    with pytest.raises(CameraError) as caught:
        open_camera(Config())
    message = str(caught.value)
    assert "numpy.dtype size changed" in message  # the cause, as Python said it
    assert f"numpy {np.__version__}" in message  # which numpy was loaded
    assert "pip uninstall numpy" in message and "install.sh" in message  # the fix


def test_picamera2_failing_for_another_reason_is_a_camera_error_naming_it(tmp_path, monkeypatch):
    _fake_picamera2_package(tmp_path, monkeypatch, "raise RuntimeError('libcamera: no cameras available')\n")
    with pytest.raises(CameraError, match="RuntimeError: libcamera: no cameras available"):
        open_camera(Config())
