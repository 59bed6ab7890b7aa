"""The camera: a small greyscale stream kept running, or a simulated one.

Why a stream kept running: opening a Pi camera and letting its exposure settle
costs a second or more; the purchase budget is 300 ms. The stream runs from
start-up with exposure and gain fixed for the IR light (no auto-exposure
hunting), and ``capture`` just takes the next frame's luminance plane.

Both backends share one interface (``capture(timeout) -> uint8 (H, W)``,
``close()``, context manager). ``open_camera(cfg)`` chooses by
``cfg.unit.hardware``; picamera2 is imported only inside ``Picamera2Camera``
so the package imports on any laptop.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np

from ..errors import CameraError, ImageFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff")


class Camera:
    """What the purchase loop needs from a camera."""

    def capture(self, timeout: float | None = None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self) -> None:
        """Raise CameraError unless the camera can deliver frames (selftest, out-of-service retry)."""
        self.capture()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Picamera2Camera(Camera):
    """picamera2 with one YUV420 stream running; frames are its Y (luminance) plane.

    ``picamera2_class`` lets a test pass a stand-in for ``picamera2.Picamera2``.
    """

    def __init__(self, width: int, height: int, exposure_us: int, analogue_gain: float,
                 frame_timeout_s: float, picamera2_class=None):
        self.width, self.height = int(width), int(height)
        self.frame_timeout_s = frame_timeout_s
        if picamera2_class is None:
            try:
                from picamera2 import Picamera2 as picamera2_class  # only on a Pi (apt: python3-picamera2)
            except Exception as exc:  # a binary mismatch raises ValueError or AttributeError, not ImportError
                raise picamera2_load_error(exc) from None
        self._cam = None
        try:
            cam = picamera2_class()
            self._cam = cam
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                buffer_count=3,
                controls={
                    # Fixed exposure for the IR illuminator: no auto-exposure settling per hand.
                    "AeEnable": False,
                    "AwbEnable": False,
                    "ExposureTime": int(exposure_us),
                    "AnalogueGain": float(analogue_gain),
                },
            )
            cam.configure(config)
            cam.start()
        except CameraError:
            raise
        except Exception as exc:  # libcamera raises RuntimeError and friends; name the device problem
            self.close()
            raise CameraError(f"camera could not be opened: {exc}") from None

    def capture(self, timeout: float | None = None) -> np.ndarray:
        """The next frame's luminance plane as uint8 (H, W); CameraError if none arrives in time."""
        if self._cam is None:
            raise CameraError("camera is closed")
        timeout = self.frame_timeout_s if timeout is None else timeout
        try:
            job = self._cam.capture_array("main", wait=False)
            array = self._cam.wait(job, timeout=timeout)
        except TimeoutError:
            raise CameraError(f"no camera frame within {timeout:.2f} s") from None
        except Exception as exc:
            raise CameraError(f"camera capture failed: {exc}") from None
        return luminance(array, self.width, self.height)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
        except Exception:
            pass
        try:
            cam.close()
        except Exception:
            pass


NUMPY_MISMATCH_SIGNS = ("numpy.dtype size changed", "_ARRAY_API not found", "compiled using NumPy",
                        "numpy.core.multiarray failed to import", "binary incompatibility")


def picamera2_load_error(exc: BaseException) -> CameraError:
    """A CameraError naming why picamera2 did not load and what fixes it.

    The usual cause on a Pi: a pip numpy (2.x) in the venv shadows the apt numpy that picamera2's
    compiled parts (simplejpeg, python3-libcamera) were built against (picamera2 issues 1088, 1211).
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and getattr(exc, "name", None) in ("picamera2", "libcamera"):
        return CameraError(
            f"picamera2 is not installed ({text}); on the Pi: sudo apt install python3-picamera2 and a venv made "
            "with --system-site-packages (scripts/install.sh does both), or set unit.hardware = \"sim\"")
    if any(sign in str(exc) for sign in NUMPY_MISMATCH_SIGNS):
        return CameraError(
            f"picamera2 cannot load with numpy {np.__version__} from {Path(np.__file__).parent} ({text}): its "
            "compiled parts were built against the OS's numpy; remove the pip numpy from the venv "
            "(/opt/vendor-node/venv/bin/pip uninstall numpy) or re-run scripts/install.sh, which uses "
            "python3-numpy from apt")
    return CameraError(f"picamera2 failed to load ({text}); check `python3 -c 'import picamera2'` as the "
                       "vendor-node user and `sudo apt install --reinstall python3-picamera2`")


def luminance(array, width: int, height: int) -> np.ndarray:
    """The Y plane of a YUV420 buffer (rows padded to the stride), as a contiguous uint8 (H, W)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] < height or array.shape[1] < width:
        raise CameraError(f"camera delivered a {array.shape} buffer, expected YUV420 for {width}x{height}")
    return np.ascontiguousarray(array[:height, :width], dtype=np.uint8)


class SimCamera(Camera):
    """A camera for the simulator and tests: plays frames queued with ``present`` or an image folder.

    Queued frames come first (the simulator presents the customer's hand before
    it triggers the sensor); with none queued, the folder's images play in a loop.
    ``fail(reason)`` makes every capture raise CameraError until ``repair()``,
    so tests can drive the out-of-service path without monkeypatching.
    """

    def __init__(self, folder: Path | str | None = None, max_queued: int = 8):
        self._frames: collections.deque = collections.deque(maxlen=max_queued)
        self._ready = threading.Condition()
        self._folder_files: list[Path] = []
        self._next_file = 0
        self._fault: str | None = None
        self._closed = False
        self.captures = 0
        if folder is not None:
            folder = Path(folder)
            if not folder.is_dir():
                raise CameraError(f"camera.sim_folder {folder}: no such folder")
            self._folder_files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._folder_files:
                raise CameraError(f"camera.sim_folder {folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def present(self, image: np.ndarray) -> None:
        """Queue a frame (uint8 (H, W)) for the next capture."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 2:
            raise CameraError(f"SimCamera.present: expected uint8 (H, W), got {image.dtype} {image.shape}")
        with self._ready:
            self._frames.append(image)
            self._ready.notify_all()

    def clear(self) -> None:
        """Drop queued frames (a customer walked away)."""
        with self._ready:
            self._frames.clear()

    def fail(self, reason: str = "simulated camera fault") -> None:
        self._fault = reason

    def repair(self) -> None:
        self._fault = None

    def check(self) -> None:
        if self._closed:
            raise CameraError("camera is closed")
        if self._fault:
            raise CameraError(self._fault)

    def capture(self, timeout: float | None = None) -> np.ndarray:
        timeout = 0.5 if timeout is None else timeout
        if self._closed:
            raise CameraError("camera is closed")
        if self._fault:
            raise CameraError(self._fault)
        with self._ready:
            if not self._frames and not self._folder_files:
                self._ready.wait_for(lambda: self._frames or self._closed, timeout=timeout)
            if self._frames:
                self.captures += 1
                return self._frames.popleft()
        if self._folder_files:
            path = self._folder_files[self._next_file % len(self._folder_files)]
            self._next_file += 1
            self.captures += 1
            return _read_grey(path)
        raise CameraError(f"no camera frame within {timeout:.2f} s")

    def close(self) -> None:
        self._closed = True
        with self._ready:
            self._ready.notify_all()


def _read_grey(path: Path) -> np.ndarray:
    from ..images import read_grey

    try:
        return read_grey(path)
    except ImageFileError as exc:
        raise CameraError(str(exc)) from None


def open_camera(cfg, picamera2_class=None) -> Camera:
    """The camera named by ``cfg.unit.hardware``: "pi" (picamera2) or "sim" (SimCamera)."""
    if cfg.unit.hardware == "sim":
        return SimCamera(cfg.camera.sim_folder)
    c = cfg.camera
    return Picamera2Camera(c.width, c.height, c.exposure_us, c.analogue_gain, c.frame_timeout_s,
                           picamera2_class=picamera2_class)
