"""The MDB adapter's command set as the vending-machine simulator answers it.

Split from vmc_sim.py: ``AdapterCommands`` turns each line the unit writes (V, C,1, C,0, C,START,
C,VEND, C,STOP, C,DISPLAY; docs/mdb-protocol.md) into the adapter's answer and the machine's next
step. It is the base of ``VendingMachineSimulator``, which owns the state these methods read and
write and provides the machine's side they call: ``_reply``/``_emit``/``_after`` (the line),
``_next_customer``, ``_in_session``, ``_deny``, ``_finish``, ``_end_session`` and ``_abort``.
Everything here runs on the simulator's line thread.
"""
from __future__ import annotations

from ..devices.board_format import DISPLAY_WIDTH, format_price, parse_price
from ..errors import ProtocolError

VERSION_LINE = "v,3.8.0.0,VMCSIM000001"


class AdapterCommands:
    """The adapter's answers to the unit's commands (a base class of VendingMachineSimulator)."""

    def _on_command(self, line: str) -> None:
        self.commands.append(line)
        fields = line.split(",")
        if line == "V":
            self._reply(VERSION_LINE)
        elif fields[:2] == ["C", "1"] and len(fields) == 2:
            self._switch_on()
        elif fields[:2] == ["C", "0"] and len(fields) == 2:
            self._switch_off()
        elif fields[:2] == ["C", "START"] and len(fields) == 3:
            self._start_session(fields[2])
        elif fields[:2] == ["C", "VEND"] and len(fields) == 3:
            self._vend_answer(fields[2])
        elif fields[:2] == ["C", "STOP"] and len(fields) == 2:
            self._stop()
        elif line.startswith("C,DISPLAY,"):
            text = line[len("C,DISPLAY,"):]
            if len(text) > DISPLAY_WIDTH:
                self.protocol_errors.append(f"display text longer than {DISPLAY_WIDTH}: {text!r}")
            self.display_lines.append(text)
        else:
            self.protocol_errors.append(f"unknown command {line!r}")

    def _switch_on(self) -> None:
        if self._adapter_on:
            self._reply('c,ERR,"cashless is on"')
            return
        self._adapter_on = True
        epoch = self._link_epoch
        self._reply("c,STATUS,INACTIVE")

        def enabled_by_machine():
            if self._link_epoch == epoch and self._adapter_on:
                self._emit("c,STATUS,DISABLED")
                self._emit("c,STATUS,ENABLED")
                self.reader_state = "enabled"
                self._next_customer()

        self._after(self.reply_delay_s + 0.01, enabled_by_machine)

    def _switch_off(self) -> None:
        if not self._adapter_on:
            self._reply('c,ERR,"cashless is off"')
            return
        self._adapter_on = False
        self._link_epoch += 1
        self._abort("reader switched off")
        self.reader_state = "off"

    def _start_session(self, funds_text: str) -> None:
        if not self._adapter_on or self.reader_state != "enabled":
            self._reply('c,ERR,"START -3"')
            return
        try:
            funds = parse_price(funds_text, self.price_format)
        except ProtocolError:
            self.protocol_errors.append(f"bad funds {funds_text!r}")
            self._reply('c,ERR,"START -2"')
            return
        self.reader_state, self._funds = "session", funds
        self._session_id += 1
        self._reply(f"c,STATUS,IDLE,{format_price(funds, self.price_format)}")
        session = self._session_id
        self._session_timer = self._after(self.session_timeout_s, lambda: self._session_timed_out(session))
        customer = self._current
        if customer is not None and customer.phase in ("waiting_session", "prompting"):
            self._in_session(customer, immediately=customer.phase == "prompting")
        else:
            self._next_customer()

    def _vend_answer(self, amount_text: str) -> None:
        if amount_text == "-1":
            if self.reader_state == "vend":
                self._deny()
            else:
                self._reply('c,ERR,"VEND -3"')
            return
        try:
            amount = parse_price(amount_text, self.price_format)
        except ProtocolError:
            self.protocol_errors.append(f"bad approval amount {amount_text!r}")
            self._reply('c,ERR,"VEND -2"')
            return
        customer = self._request
        if self.reader_state != "vend" or customer is None:
            self.protocol_errors.append(f"approval of {amount_text} with no vend request pending")
            self._reply('c,ERR,"VEND -3"')
            return
        if amount != customer.price_cents:
            self.protocol_errors.append(f"approved {amount} cents for a {customer.price_cents}-cent item")
        self.reader_state, self._approved_cents = "vending", amount
        self._reply("r,ACK")
        vend_time = self.slow_s * 2 if customer.behaviour == "slow" else self.vend_time_s
        step = customer.step
        customer.timers.append(self._after(vend_time, lambda: self._vend_done(customer, step)))

    def _stop(self) -> None:
        if self.reader_state == "vend":
            self._deny()  # the Qibixx sample denies with C,STOP too
        elif self.reader_state == "session":
            customer = self._current
            if customer is not None and customer.phase == "in_session":
                self._finish(customer, "session_ended")
            self._end_session()
