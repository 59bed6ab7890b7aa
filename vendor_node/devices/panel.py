"""The unit's panel: IR proximity sensor in, status LED and buzzer out (gpiozero).

Why an Event and a timestamp: the sensor's edge arrives on gpiozero's callback
thread; the purchase loop waits on it with a timeout and measures the time from
that edge to the approval reaching the vending board.

Backends by name: "pi" uses gpiozero's default pin factory (lgpio on a Pi 5);
"sim" uses ``gpiozero.pins.mock.MockFactory`` passed explicitly as ``pin_factory``
(nothing global is changed) and the simulator moves the sensor's mock pin with
``present_hand()`` / ``remove_hand()``.
"""
from __future__ import annotations

import threading
import time

from ..errors import SensorError

# outcome -> (LED colour (r, g, b) on/off, blink, beep pattern (on_s, off_s, count) or None)
FEEDBACK = {
    "ready": ((0, 0, 1), False, None),
    "working": ((0, 1, 1), False, None),
    "retry": ((1, 1, 0), False, (0.05, 0.05, 1)),
    "approved": ((0, 1, 0), False, (0.05, 0.05, 1)),
    "vended": ((0, 1, 0), False, (0.05, 0.05, 2)),
    "refused": ((1, 0, 0), False, (0.4, 0.1, 1)),
    "unknown": ((1, 0, 0), False, (0.08, 0.08, 3)),
    "out_of_service": ((1, 0, 0), True, None),
    "cooldown": ((1, 0, 1), True, (0.4, 0.1, 1)),
}
OUTCOMES = tuple(FEEDBACK)


class Panel:
    """Sensor, LED and buzzer behind the few calls the purchase loop makes."""

    def __init__(self, sensor, led, buzzer, *, sensor_pin=None, active_low: bool = True, beep_scale: float = 1.0,
                 mock_factory=None):
        self._sensor, self._led, self._buzzer = sensor, led, buzzer
        self._sensor_pin = sensor_pin  # a MockPin in simulation, None on hardware
        self._mock_factory = mock_factory
        self._active_low = active_low
        self._beep_scale = beep_scale
        self._hand = threading.Event()
        self._trigger_time: float | None = None
        self._lock = threading.Lock()
        self.listeners: list = []  # callables(outcome) -- the simulator and tests watch feedback here
        self.last_outcome: str | None = None
        sensor.when_activated = self._on_activated

    def _on_activated(self, *_):
        with self._lock:
            self._trigger_time = time.monotonic()
            self._hand.set()

    def wait_for_hand(self, timeout: float) -> float | None:
        """Wait up to ``timeout`` s for the sensor to fire; the trigger's monotonic time, or None."""
        if not self._hand.wait(timeout):
            return None
        with self._lock:
            self._hand.clear()
            return self._trigger_time

    def discard_hand(self) -> None:
        """Forget a trigger seen while the unit could not serve it (out of service, cooling down)."""
        with self._lock:
            self._hand.clear()

    def hand_present(self) -> bool:
        return bool(self._sensor.is_active)

    def show(self, outcome: str) -> None:
        """LED colour and beep pattern for one outcome (see FEEDBACK)."""
        try:
            colour, blink, beep = FEEDBACK[outcome]
        except KeyError:
            raise ValueError(f"unknown panel outcome {outcome!r}; one of {', '.join(OUTCOMES)}") from None
        self.last_outcome = outcome
        if blink:
            self._led.blink(on_time=0.5, off_time=0.5, on_color=colour, off_color=(0, 0, 0))
        else:
            self._led.color = colour
        if beep and self._beep_scale > 0:
            on_s, off_s, count = beep
            self._buzzer.beep(on_time=on_s * self._beep_scale, off_time=off_s * self._beep_scale,
                              n=count, background=True)
        for listener in list(self.listeners):
            listener(outcome)

    # --- simulation only ------------------------------------------------------
    def present_hand(self) -> None:
        """Simulator: a hand arrives over the sensor (drives the mock pin to its active level)."""
        pin = self._require_mock_pin()
        if self._active_low:
            pin.drive_high()
            pin.drive_low()
        else:
            pin.drive_low()
            pin.drive_high()

    def remove_hand(self) -> None:
        pin = self._require_mock_pin()
        if self._active_low:
            pin.drive_high()
        else:
            pin.drive_low()

    def forget_sim_history(self) -> None:
        """Simulator: MockPin records every level it ever had; drop that record on long runs."""
        if self._mock_factory is not None:
            for pin in list(self._mock_factory.pins.values()):
                pin.clear_states()

    def _require_mock_pin(self):
        if self._sensor_pin is None:
            raise SensorError("present_hand/remove_hand drive the simulated sensor only")
        return self._sensor_pin

    def close(self) -> None:
        for device in (self._sensor, self._led, self._buzzer):
            try:
                device.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_panel(cfg, pin_factory=None) -> Panel:
    """The panel on the backend named by ``cfg.unit.hardware``.

    "sim" builds a fresh MockFactory unless one is passed; "pi" uses gpiozero's
    default factory (lgpio on the Pi 5) unless one is passed.
    """
    try:
        from gpiozero import Buzzer, DigitalInputDevice, RGBLED
    except ImportError as exc:
        raise SensorError(f"gpiozero is not installed: {exc}") from None
    g = cfg.gpio
    sim = cfg.unit.hardware == "sim"
    if sim and pin_factory is None:
        from gpiozero.pins.mock import MockFactory

        pin_factory = MockFactory()
    devices = []
    try:
        sensor = DigitalInputDevice(g.proximity_pin, pull_up=g.proximity_active_low, pin_factory=pin_factory)
        devices.append(sensor)
        led = RGBLED(g.led_red_pin, g.led_green_pin, g.led_blue_pin, pwm=False, pin_factory=pin_factory)
        devices.append(led)
        buzzer = Buzzer(g.buzzer_pin, pin_factory=pin_factory)
        devices.append(buzzer)
    except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, GPIOPinInUse, ...)
        for device in devices:
            device.close()
        raise SensorError(f"GPIO could not be set up (pins {g.proximity_pin}, {g.led_red_pin}/"
                          f"{g.led_green_pin}/{g.led_blue_pin}, {g.buzzer_pin}): {exc}") from None
    sensor_pin = pin_factory.pin(g.proximity_pin) if sim else None
    return Panel(sensor, led, buzzer, sensor_pin=sensor_pin, active_low=g.proximity_active_low,
                 beep_scale=0.0 if sim else 1.0, mock_factory=pin_factory if sim else None)
