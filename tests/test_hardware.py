"""On a real Pi, with the camera, IR sensor, LED, buzzer and MDB adapter attached: does each part answer?

Skipped unless VENDOR_NODE_HW_TESTS=1. A technician runs it on the unit, as the service user,
after install.sh and before `systemctl start vendor-node` (the service holds the camera and port):

    sudo systemctl stop vendor-node
    sudo -u vendor-node env VENDOR_NODE_HW_TESTS=1 VENDOR_NODE_CONFIG=/etc/vendor-node/config.toml \\
        /opt/vendor-node/venv/bin/python -m pytest -v /opt/vendor-node/src/tests/test_hardware.py

The IR-edge test asks for a hand over the reader: it waits up to VENDOR_NODE_HW_HAND_S seconds
(default 30) for the sensor's edge, on the GPIO event, not by polling. The LED and buzzer tests
check that the pins take the values asked (a technician watches and listens as well).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("VENDOR_NODE_HW_TESTS") != "1",
                                reason="hardware tests: set VENDOR_NODE_HW_TESTS=1 on a Pi with the unit's parts attached")


@pytest.fixture(scope="module")
def cfg():
    from vendor_node.config import load_config

    config = load_config()  # $VENDOR_NODE_CONFIG or /etc/vendor-node/config.toml, as the service
    if config.unit.hardware != "pi":
        pytest.fail(f"unit.hardware is {config.unit.hardware!r}: the hardware tests need \"pi\"")
    return config


def test_the_camera_delivers_greyscale_frames_of_the_configured_size(cfg):
    from vendor_node.devices.camera import open_camera

    with open_camera(cfg) as camera:
        frames = [camera.capture() for _ in range(3)]
    for frame in frames:
        assert frame.dtype == np.uint8 and frame.shape == (cfg.camera.height, cfg.camera.width)
    assert max(float(f.std()) for f in frames) > 1.0, "frames are flat: lens cap on, IR light off, or no sensor?"


def test_the_picamera2_stack_uses_the_os_numpy():
    import numpy

    assert numpy.__file__.startswith("/usr/lib/python3/dist-packages/"), (
        f"numpy {numpy.__version__} from {numpy.__file__}: a pip numpy shadows the OS's (re-run install.sh)")


def test_the_ir_sensor_sees_a_hand_arrive(cfg):
    from vendor_node.devices.panel import open_panel

    wait_s = float(os.environ.get("VENDOR_NODE_HW_HAND_S", "30"))
    with open_panel(cfg) as panel:
        panel.discard_hand()
        print(f"\nhold a hand over the reader within {wait_s:.0f} s ...", flush=True)
        triggered = panel.wait_for_hand(wait_s)
    assert triggered is not None, f"no IR edge on GPIO {cfg.gpio.proximity_pin} within {wait_s:.0f} s"


def test_the_led_takes_each_outcome_colour(cfg):
    from vendor_node.devices.panel import FEEDBACK, open_panel

    with open_panel(cfg) as panel:
        for outcome, (colour, blink, _beep) in FEEDBACK.items():
            panel.show(outcome)
            if not blink:
                assert tuple(round(c, 2) for c in panel._led.color) == tuple(round(c, 2) for c in colour), outcome
        panel.show("ready")


def test_the_buzzer_pin_switches(cfg):
    from vendor_node.devices.panel import open_panel

    with open_panel(cfg) as panel:
        panel._buzzer.on()
        assert panel._buzzer.is_active
        panel._buzzer.off()
        assert not panel._buzzer.is_active


def test_the_mdb_adapter_answers(cfg):
    from vendor_node.cli.selftest import serial_device_problem
    from vendor_node.unit.assemble import open_board

    problem = serial_device_problem(str(cfg.board.port))
    assert problem is None, problem
    with open_board(cfg) as board:
        answer = board.ping()
    assert answer, f"{cfg.board.port}: the adapter gave no version answer"


def test_the_secure_element_answers_and_its_slot_is_ready(cfg):
    """keys.mode = "secure_element": the chip wakes, its configuration suits the slot, and its MAC is stable
    for one challenge and different for another (nothing is written)."""
    if cfg.keys.mode != "secure_element":
        pytest.skip("keys.mode is not \"secure_element\"")
    from vendor_node.unit.keysource import secure_element_source

    chip = secure_element_source(cfg.keys, cfg.state_dir)
    assert f"slot {cfg.keys.secure_element.slot} ready" in chip.status()
    challenge = os.urandom(32)
    assert chip.respond(challenge) == chip.respond(challenge) != chip.respond(os.urandom(32))
