"""The panel on gpiozero's MockFactory: the sensor's edge wakes the loop, each outcome has its colour and beeps."""
from __future__ import annotations

import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from vendor_node.config import Config
from vendor_node.errors import SensorError
from vendor_node.devices.panel import FEEDBACK, OUTCOMES, open_panel

SIM = Config().replace(unit={"hardware": "sim"})


@pytest.fixture
def panel():
    with open_panel(SIM) as panel:
        yield panel


def test_no_hand_means_none_after_the_timeout(panel):
    started = time.monotonic()
    assert panel.wait_for_hand(0.05) is None
    assert 0.04 <= time.monotonic() - started < 1.0


def test_hand_gives_the_trigger_time_once(panel):
    before = time.monotonic()
    panel.present_hand()
    trigger = panel.wait_for_hand(1.0)
    assert trigger is not None and before <= trigger <= time.monotonic()
    assert panel.hand_present()
    assert panel.wait_for_hand(0.01) is None  # consumed
    panel.remove_hand()
    assert not panel.hand_present()


def test_hand_from_another_thread_wakes_the_waiter(panel):
    threading.Timer(0.05, panel.present_hand).start()
    assert panel.wait_for_hand(2.0) is not None


def test_discarded_trigger_is_not_served(panel):
    panel.present_hand()
    panel.discard_hand()
    assert panel.wait_for_hand(0.01) is None


def test_active_high_sensor(tmp_path):
    cfg = SIM.replace(gpio={"proximity_active_low": False})
    with open_panel(cfg) as panel:
        assert not panel.hand_present()
        panel.present_hand()
        assert panel.wait_for_hand(0.5) is not None and panel.hand_present()


def test_every_outcome_sets_its_colour_and_tells_listeners():
    factory = MockFactory()
    seen = []
    with open_panel(SIM, pin_factory=factory) as panel:
        panel.listeners.append(seen.append)
        for outcome in OUTCOMES:
            panel.show(outcome)
            colour, blink, _ = FEEDBACK[outcome]
            if not blink:
                pins = [factory.pin(n).state for n in (22, 27, 24)]
                assert tuple(bool(p) for p in pins) == tuple(bool(c) for c in colour), outcome
        assert seen == list(OUTCOMES)
        with pytest.raises(ValueError, match="unknown panel outcome"):
            panel.show("party")


def test_buzzer_beeps_on_hardware_patterns():
    factory = MockFactory()
    with open_panel(SIM, pin_factory=factory) as panel:
        panel._beep_scale = 0.02  # the hardware pattern, 50 times faster
        panel.show("unknown")  # three short beeps, played on gpiozero's background thread
        pin = factory.pin(23)
        deadline = time.monotonic() + 10.0
        while (sum(s.state for s in pin.states) < 3 or pin.states[-1].state) and time.monotonic() < deadline:
            time.sleep(0.005)  # polling the pattern's end, bounded by the deadline
        highs = [s for s in pin.states if s.state]
        assert len(highs) == 3 and not pin.states[-1].state


def test_sim_pins_are_not_global(panel):
    from gpiozero import Device

    assert Device.pin_factory is None or not isinstance(Device.pin_factory, MockFactory)


def test_busy_pin_is_a_sensor_error():
    factory = MockFactory()
    cfg = SIM.replace(gpio={"led_red_pin": 17})  # clashes with the sensor
    with pytest.raises(SensorError, match="GPIO could not be set up"):
        open_panel(cfg, pin_factory=factory)


def test_present_hand_needs_the_simulated_sensor():
    from vendor_node.devices.panel import Panel

    class Device:
        when_activated = None
        is_active = False

        def close(self):
            pass

    panel = Panel(Device(), Device(), Device())
    with pytest.raises(SensorError, match="simulated sensor"):
        panel.present_hand()
