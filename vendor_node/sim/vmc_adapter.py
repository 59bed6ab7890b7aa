"""The MDB adapter's command set as the vending-machine simulator answers it: as strict as the hardware.

Split from vmc_sim.py: ``AdapterCommands`` turns each line a client writes into the adapter's answer
and the machine's next step, following docs/mdb-protocol.md and the start-up lines of real clients
(solomdb, pyMDBTerminal, vobox-pi-player): V, X,0/X,1, C,0, C,1, C,SETCONF, C,START, C,VEND (with an
optional product), C,STOP, C,DISPLAY, C,REVALUE, C,SALE. The adapter's settings are volatile: they
start at the power-up defaults and ``power_cycle()`` forgets them. It refuses settings while the
cashless is on, prints and reads prices with its configured decimal places, offers always-idle only
with ``mdb-always-idle=1``, answers a busy C,START (``start_busy``/``start_busy_rate``) and a display
request outside Enabled. It is the base of ``VendingMachineSimulator``, which owns the state and the
machine's side these methods call. Everything here runs on the simulator's line thread.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..devices.board_format import DISPLAY_WIDTH

VERSION_LINE = "v,3.8.0.0,VMCSIM000001"
# the adapter's settings at power-up (assumptions: the sources name the keys, not their defaults)
POWER_UP_SETTINGS = {"mdb-always-idle": "0", "mdb-currency-code": "0x1978", "mdb-decimal-places": "2",
                     "mdb-scale-factor": "1", "mdb-timeout-vend": "30", "mdb-timeout-idle": "30",
                     "mdb-address": "0x10", "mdb-ftl-enabled": "0", "mdb-cashsale-enabled": "0",
                     "mdb-restore-funds": "0", "mdb-timeout": "5", "mdb-display-time": "3"}
_SETTING_VALUES = {  # what each documented key accepts [P1]
    "mdb-always-idle": r"[01]", "mdb-ftl-enabled": r"[01]", "mdb-cashsale-enabled": r"[01]",
    "mdb-restore-funds": r"[01]", "mdb-currency-code": r"0x1\d{3}", "mdb-address": r"0x(10|60)",
    "mdb-decimal-places": r"[0-3]", "mdb-scale-factor": r"([1-9]|[1-9]\d|100)", "mdb-timeout": r"[1-9]\d{0,9}",
    "mdb-timeout-idle": r"\d{1,10}", "mdb-timeout-vend": r"\d{1,10}", "mdb-display-time": r"[1-9]\d{0,5}",
}


class AdapterCommands:
    """The adapter's answers to a client's commands (a base class of VendingMachineSimulator)."""

    # --- money in the adapter's configured format -------------------------------------
    @property
    def decimal_places(self) -> int:
        return int(self.settings["mdb-decimal-places"])

    def price_text(self, cents: int) -> str:
        """How the adapter prints ``cents``: currency units with its decimal places, or (0 places) the
        bus's scaled integer, taken as minor units (assumption, docs/mdb-protocol.md)."""
        scaled = cents // int(self.settings["mdb-scale-factor"])
        places = self.decimal_places
        if places == 0:
            return str(scaled)
        return f"{Decimal(scaled) / 100:.{places}f}"

    def amount_cents(self, text: str) -> int | None:
        """A client's amount read in the configured format, or None when it is not one."""
        places = self.decimal_places
        pattern = r"\d{1,9}" if places == 0 else rf"\d{{1,7}}(\.\d{{1,{places}}})?"
        if not re.fullmatch(pattern, text):
            return None
        try:
            value = Decimal(text) if places == 0 else Decimal(text) * 100
        except InvalidOperation:  # pragma: no cover - the pattern rules it out
            return None
        if value != value.to_integral_value():
            return None  # e.g. 1.005 with 3 places: no whole number of cents
        return int(value) * int(self.settings["mdb-scale-factor"])

    # --- commands ----------------------------------------------------------------------
    def _on_command(self, line: str) -> None:
        self.commands.append(line)
        fields = line.split(",")
        head = fields[:2]
        if line == "V":
            self._reply(VERSION_LINE)
        elif head in (["X", "0"], ["X", "1"]) and len(fields) == 2:
            self._reply("x,ACK")  # the sniffer on/off: vobox-pi-player sends X,0 at start [P3]
        elif head == ["C", "1"] and len(fields) == 2:
            self._switch_on()
        elif head == ["C", "0"] and len(fields) == 2:
            self._switch_off()
        elif head == ["C", "SETCONF"] and len(fields) == 3:
            self._set(fields[2])
        elif head == ["C", "START"] and len(fields) == 3:
            self._start_session(fields[2])
        elif head == ["C", "VEND"] and len(fields) in (3, 4):
            self._vend_answer(fields[2], fields[3] if len(fields) == 4 else None)
        elif head == ["C", "STOP"] and len(fields) == 2:
            self._stop()
        elif line.startswith("C,DISPLAY,"):
            self._display(line[len("C,DISPLAY,"):])
        elif head == ["C", "REVALUE"] and len(fields) == 3 and fields[2] in ("0", "1"):
            self.revalue_answers.append(fields[2])
        elif head == ["C", "SALE"] and len(fields) == 4:
            self.cash_sales.append((fields[2], fields[3]))  # pyMDBTerminal's cash sale report [P1]
        else:
            self.protocol_errors.append(f"unknown command {line!r}")
            self._reply('c,UNKNOWN,"' + line[:1] + '"')

    def _set(self, assignment: str) -> None:
        key, _, value = assignment.partition("=")
        if self._adapter_on:
            self._reply('c,ERR,"cashless is on"')  # settings change only while the cashless is off [P1]
            self.refused_settings.append(assignment)
            return
        if key not in _SETTING_VALUES or not re.fullmatch(_SETTING_VALUES[key], value):
            self.refused_settings.append(assignment)
            self._reply(f'c,ERR,"SETCONF -2 {key}"')
            return
        self.settings[key] = value
        self.set_since_power_up.add(key)
        self._reply("c,SET,OK")

    def _switch_on(self) -> None:
        if self._adapter_on:
            self._reply('c,ERR,"cashless is on"')
            return
        self._adapter_on = True
        epoch = self._link_epoch
        self._reply("c,STATUS,INACTIVE")
        self._reply("c,1")

        def polled_by_machine():  # the VMC finds the reader, sets it up, then enables it [Q2]
            if self._link_epoch == epoch and self._adapter_on:
                self._emit("r,ACK")
                self._emit("c,STATUS,DISABLED")
                self._emit("r,ACK")
                self._after(self.status_delay_s, enabled_by_machine)

        def enabled_by_machine():
            if self._link_epoch == epoch and self._adapter_on:
                self._emit("c,STATUS,ENABLED")
                self._emit("r,ACK")
                self.reader_state = "enabled"
                self._next_customer()

        self._after(self.reply_delay_s + self.status_delay_s, polled_by_machine)

    def _switch_off(self) -> None:
        if not self._adapter_on:
            self._reply('c,ERR,"cashless is off"')
            return
        self._adapter_on = False
        self._link_epoch += 1
        self._abort("reader switched off")
        self.reader_state = "off"

    def _start_session(self, funds_text: str) -> None:
        if not self._adapter_on:
            self._reply('c,ERR,"cashless is off"')
            return
        if self.reader_state != "enabled" or self._start_is_busy():
            self.start_busy_answers += self.reader_state == "enabled"
            self._reply('c,ERR,"START -3"')
            return
        funds = self.amount_cents(funds_text)
        if funds is None:
            self.protocol_errors.append(f"funds {funds_text!r} not in the adapter's format "
                                        f"({self.decimal_places} decimal places)")
            self._reply('c,ERR,"START -2"')
            return
        self.reader_state, self._funds = "session", funds
        self._busy_left = None
        self._session_id += 1
        self._reply(f"c,STATUS,IDLE,{self.price_text(funds)}")
        session = self._session_id
        self._session_timer = self._after(self.session_timeout_s, lambda: self._session_timed_out(session))

        self._session_begun = False

        def begin():  # the machine acts on the session once the adapter's answer is out, never before it
            if self._session_id != session or self.reader_state != "session":
                return
            self._session_begun = True
            customer = self._current
            if customer is not None and customer.phase in ("waiting_session", "prompting"):
                self._in_session(customer, immediately=customer.phase == "prompting")
            else:
                self._next_customer()

        if self.reply_delay_s > 0:
            self._after(self.reply_delay_s, begin)
        else:
            begin()

    def _start_is_busy(self) -> bool:
        """The machine is still busy for this many STARTs of each session (a real VMC between polls)."""
        if self._busy_left is None:
            self._busy_left = self.start_busy + (1 if self.start_busy_rate and self._rng.random() < self.start_busy_rate
                                                 else 0)
        if self._busy_left > 0:
            self._busy_left -= 1
            return True
        return False

    def _vend_answer(self, amount_text: str, product: str | None) -> None:
        if amount_text == "-1":
            if self.reader_state == "vend":
                self._deny()
            else:
                self._reply('c,ERR,"VEND -3"')
            return
        amount = self.amount_cents(amount_text)
        if amount is None or amount <= 0:
            self.protocol_errors.append(f"bad approval amount {amount_text!r} "
                                        f"({self.decimal_places} decimal places configured)")
            self._reply('c,ERR,"VEND -2"')
            return
        customer = self._request
        if self.reader_state != "vend" or customer is None:
            self.protocol_errors.append(f"approval of {amount_text} with no vend request pending")
            self._reply('c,ERR,"VEND -3"')
            return
        if product is not None and product != customer.item:
            self._reply('c,ERR,"VEND -3"')  # approved for another product: the docs' C,VEND,<amount>,<product> [Q2]
            return
        if customer.behaviour == "change_on_approval" and not customer.changed:
            self._change_request(customer)  # the change crossed the approval on the wire
        self._approve(customer, amount)

    def _display(self, text: str) -> None:
        if len(text) > DISPLAY_WIDTH:
            self.protocol_errors.append(f"display text longer than {DISPLAY_WIDTH}: {text!r}")
        if self.reader_state != "enabled":  # display requests only while Enabled [P1]
            self.display_refused.append(text)
            self._reply('c,ERR,"DISPLAY -3"')
            return
        self.display_lines.append(text)

    def _stop(self) -> None:
        if self.reader_state == "vend":
            self._deny()  # the always-idle tutorial denies with C,STOP [Q3]
        elif self.reader_state == "session":
            customer = self._current
            if customer is not None and customer.phase == "in_session":
                self._finish(customer, "session_ended")
            self._end_session()
