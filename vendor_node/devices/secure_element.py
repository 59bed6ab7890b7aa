"""A secure element (ATECC608-class, on I2C) as the board's key source: its slot secret never leaves the chip.

Why: a Pi without an OTP device key (Zero 2 W, an unprogrammed Pi 4) still needs key files that open on
this board only. The chip keeps a random 32-byte secret in a slot that cannot be read (SlotConfig
IsSecret set, EncryptRead clear) and answers the MAC command with SHA-256 over that secret, a 32-byte
challenge and its serial number; the unit's key-wrapping key is HKDF of that answer (money/key_wrap.py).
The challenge is a file in the state directory: copied to another board, that board's chip answers
something else, and nothing opens.

The command set, as Microchip's CryptoAuthLib speaks it (cited, not copied):
- packet: word address 0x03, then count (itself to CRC, 7 + data), opcode, param1, param2 (2 bytes, LSB
  first), data, CRC-16 (polynomial 0x8005, bits fed LSB first, sent LSB first) of count..data
  (lib/calib/calib_command.h ATCAPacket, atCRC); an answer is count, data, CRC; a 4-byte answer carries
  a status byte (0x00 success, 0x03 parse error, 0x0F execution error, 0x11 after wake, 0xFF CRC error).
- wake: a write to address 0x00 holds SDA low past tWLO, then 1.5 ms tWHI, then the chip answers
  04 11 33 43 (lib/hal/hal_linux_i2c_userspace.c hal_i2c_wake); word address 0x01 puts it to sleep.
  While it computes, reads are not acknowledged: the host polls (calib_execution.c).
- Read (0x02, param1 0x80 = 32 bytes of the config zone, param2 = block << 3), Write (0x12, param1 0x82 =
  32 bytes of the data zone, param2 = slot << 3), Lock (0x17, param1 0x81 = data zone, no CRC summary),
  MAC (0x08, mode 0x40 = challenge from the input, serial number included, param2 = slot).
- MAC's message (lib/host/atca_host.c atcah_mac, atcah_include_data): slot key (32), challenge (32),
  opcode, mode, slot (2, LSB first), 8 + 3 zero bytes (no OTP), SN[8], SN[4:8], SN[0:2], SN[2:4].
- config zone: SN[0:4] at 0, revision at 4, SN[4:9] at 8, SlotConfig at 20 + 2n, LockValue (data zone)
  at 86, LockConfig at 87 (0x00 locked, 0x55 not), SlotLocked at 88, KeyConfig at 96 + 2n.
The transport (``wake``, ``write``, ``read``, ``close``) is secure_element_i2c.py on a Pi, the emulated
chip of secure_element_emulator.py in the simulator and the tests (unit/keysource.py picks one).
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass

from ..errors import KeyFileError

SECRET_BYTES = 32
WAKE_ANSWER = bytes([0x04, 0x11, 0x33, 0x43])
WORD_COMMAND, WORD_SLEEP = 0x03, 0x01
OP_READ, OP_WRITE, OP_LOCK, OP_MAC = 0x02, 0x12, 0x17, 0x08
READ_CONFIG_32, WRITE_DATA_32, LOCK_DATA_NO_CRC = 0x80, 0x82, 0x81
MAC_MODE = 0x40  # challenge from the input, the whole serial number in the message
LOCKED = 0x00
STATUS_TEXT = {0x01: "miscompare", 0x03: "parse error", 0x05: "ECC fault", 0x07: "self-test error",
               0x0F: "execution error (the slot's configuration forbids it, or the zone is locked)",
               0x11: "not awake", 0xEE: "watchdog about to expire", 0xFF: "CRC or communication error"}
COMMAND_WAIT_S = 0.1  # the longest a command computes (Lock, 32 ms typical) with margin; polled
POLL_S = 0.002


def crc16(data: bytes) -> bytes:
    """CryptoAuthLib's atCRC: polynomial 0x8005, initial 0, each byte's bits LSB first; LSB first on the wire."""
    crc = 0
    for byte in data:
        for bit in range(8):
            data_bit = (byte >> bit) & 1
            crc_bit = crc >> 15
            crc = (crc << 1) & 0xFFFF
            if data_bit != crc_bit:
                crc ^= 0x8005
    return bytes([crc & 0xFF, crc >> 8])


def command_packet(opcode: int, param1: int, param2: int, data: bytes = b"") -> bytes:
    """What goes on the wire after the word address: count, opcode, param1, param2 (LSB first), data, CRC."""
    body = bytes([7 + len(data), opcode, param1, param2 & 0xFF, param2 >> 8]) + data
    return body + crc16(body)


def check_answer(answer: bytes, what: str) -> bytes:
    """An answer's data (count and CRC stripped); KeyFileError for a bad CRC or a failure status."""
    if len(answer) < 4 or answer[0] != len(answer) or crc16(answer[:-2]) != answer[-2:]:
        raise KeyFileError(f"secure element: garbled answer to {what} ({answer.hex()}): check the I2C wiring")
    data = answer[1:-2]
    if len(data) == 1 and data[0] != 0x00:
        raise KeyFileError(f"secure element: {what} failed, status 0x{data[0]:02x} "
                           f"({STATUS_TEXT.get(data[0], 'unknown status')})")
    return data


def mac_message(secret: bytes, challenge: bytes, slot: int, serial: bytes, mode: int = MAC_MODE) -> bytes:
    """The 88 bytes the chip hashes for MAC (atcah_mac with atcah_include_data; no OTP bits)."""
    sn_mid = serial[4:8] if mode & 0x40 else bytes(4)
    sn_low = serial[2:4] if mode & 0x40 else bytes(2)
    return (secret + challenge + bytes([OP_MAC, mode, slot & 0xFF, slot >> 8]) + bytes(11)
            + serial[8:9] + sn_mid + serial[0:2] + sn_low)


def expected_mac(secret: bytes, challenge: bytes, slot: int, serial: bytes, mode: int = MAC_MODE) -> bytes:
    return hashlib.sha256(mac_message(secret, challenge, slot, serial, mode)).digest()


@dataclass(frozen=True)
class ChipConfig:
    """The 128-byte configuration zone, read as far as this module needs it."""

    raw: bytes

    @property
    def serial(self) -> bytes:
        return self.raw[0:4] + self.raw[8:13]

    @property
    def revision(self) -> bytes:
        return self.raw[4:8]

    @property
    def config_locked(self) -> bool:
        return self.raw[87] == LOCKED

    @property
    def data_locked(self) -> bool:
        return self.raw[86] == LOCKED

    def slot_config(self, slot: int) -> int:
        return int.from_bytes(self.raw[20 + 2 * slot:22 + 2 * slot], "little")

    def key_config(self, slot: int) -> int:
        return int.from_bytes(self.raw[96 + 2 * slot:98 + 2 * slot], "little")

    def slot_problems(self, slot: int) -> list[str]:
        """Why ``slot`` cannot hold the unit's secret (empty: it can)."""
        if self.revision[2] not in (0x50, 0x60):
            return [f"not an ATECC508A/608 (revision {self.revision.hex()})"]
        if not self.config_locked:
            return ["the configuration zone is not locked (this tool never writes a chip's configuration: lock it "
                    f"with one where slot {slot} is a secret SHA key, see docs/threat-model.md)"]
        sc, kc, problems = self.slot_config(slot), self.key_config(slot), []
        if not sc & 0x80:
            problems.append(f"slot {slot} is not secret (SlotConfig.IsSecret = 0): its key could be read out")
        if sc & 0x40:
            problems.append(f"slot {slot} can be read encrypted (SlotConfig.EncryptRead = 1): its key can leave")
        if sc & 0x10:
            problems.append(f"slot {slot} refuses MAC (SlotConfig.NoMac = 1)")
        if sc & 0x20:
            problems.append(f"slot {slot} is limited-use (SlotConfig.LimitedUse = 1): it would wear out")
        if (kc >> 2) & 0x7 != 7:
            problems.append(f"slot {slot} holds an ECC or AES key (KeyConfig.KeyType = {(kc >> 2) & 0x7}), "
                            "not a SHA secret (7)")
        if kc & 0xC0:
            problems.append(f"slot {slot} needs a random nonce or an authorization (KeyConfig.ReqRandom/ReqAuth)")
        return problems


class SecureElement:
    """The chip's command set over a transport; each use wakes it and puts it back to sleep (its watchdog
    would otherwise put it to sleep mid-command after about 1.3 s)."""

    def __init__(self, open_transport, slot: int, describe: str, *, sleep=time.sleep, clock=time.monotonic):
        self._open_transport = open_transport
        self.slot = slot
        self._describe = describe
        self._sleep, self._clock = sleep, clock

    def describe(self) -> str:
        return self._describe

    @contextlib.contextmanager
    def _awake(self):
        transport = self._open_transport()
        try:
            self._wake(transport)
            yield transport
            transport.write(bytes([WORD_SLEEP]))
        except OSError as exc:
            raise KeyFileError(f"{self._describe}: I2C error: {exc}") from None
        finally:
            transport.close()

    def _wake(self, transport) -> None:
        """Wake the chip; one left awake by a process that died mid-session is put to sleep and woken again."""
        for attempt in (1, 2):
            transport.wake()
            try:
                answer = self._poll(transport, len(WAKE_ANSWER), "wake")
            except KeyFileError:
                answer = b""
            if answer == WAKE_ANSWER:
                return
            if attempt == 1:
                try:
                    transport.write(bytes([WORD_SLEEP]))
                except OSError:
                    pass
        raise KeyFileError(f"{self._describe}: no ATECC wake answer (got {answer.hex() or 'nothing'}); is the chip "
                           "at this bus and address (i2cdetect -y BUS), and the bus at 100 kHz "
                           "(dtparam=i2c_arm_baudrate=100000: a faster bus makes the wake pulse too short)?")

    def _poll(self, transport, count: int, what: str) -> bytes:
        """Read an answer of ``count`` bytes (0: as its count byte says) once the chip acknowledges."""
        deadline = self._clock() + COMMAND_WAIT_S
        while True:
            try:
                head = transport.read(count or 1)
                break
            except OSError:  # not acknowledged: still computing
                if self._clock() >= deadline:
                    raise KeyFileError(f"{self._describe}: no answer to {what} within {COMMAND_WAIT_S:.1f} s") \
                        from None
                self._sleep(POLL_S)
        if count or head[0] < 4:
            return head
        return head + transport.read(head[0] - 1)

    def _execute(self, transport, what: str, opcode: int, param1: int, param2: int, data: bytes = b"") -> bytes:
        transport.write(bytes([WORD_COMMAND]) + command_packet(opcode, param1, param2, data))
        return check_answer(self._poll(transport, 0, what), what)

    # --- the commands ---
    def _read_config(self, transport) -> ChipConfig:
        blocks = [self._execute(transport, "Read config", OP_READ, READ_CONFIG_32, block << 3) for block in range(4)]
        if any(len(b) != 32 for b in blocks):
            raise KeyFileError(f"{self._describe}: short configuration read")
        return ChipConfig(b"".join(blocks))

    def chip_config(self) -> ChipConfig:
        with self._awake() as transport:
            return self._read_config(transport)

    def is_programmed(self) -> bool:
        config = self.chip_config()
        return config.data_locked and not config.slot_problems(self.slot)

    def respond(self, challenge: bytes) -> bytes:
        """The chip's MAC over ``challenge`` with its slot secret: the board's secret for key_wrap."""
        if len(challenge) != 32:
            raise KeyFileError(f"the secure element challenge must be 32 bytes, got {len(challenge)}")
        with self._awake() as transport:
            config = self._read_config(transport)
            self._check_usable(config)
            answer = self._execute(transport, "MAC", OP_MAC, MAC_MODE, self.slot, challenge)
        if len(answer) != 32:
            raise KeyFileError(f"{self._describe}: MAC answered {len(answer)} bytes, expected 32")
        return answer

    def _check_usable(self, config: ChipConfig) -> None:
        problems = config.slot_problems(self.slot)
        if problems:
            raise KeyFileError(f"{self._describe}: " + "; ".join(problems))
        if not config.data_locked:
            raise KeyFileError(f"{self._describe}: the data zone is not locked, so slot {self.slot} holds no secret "
                               "yet: run `vendor-node keys program-secure-element` once (irreversible)")

    def program(self, secret: bytes) -> None:
        """Write ``secret`` into the slot and lock the data zone: IRREVERSIBLE. Checked by a MAC the host computes
        from the secret it wrote; the caller forgets the secret afterwards."""
        if len(secret) != SECRET_BYTES or not any(secret):
            raise KeyFileError(f"a secure element secret must be {SECRET_BYTES} random bytes, not all zeros")
        with self._awake() as transport:
            config = self._read_config(transport)
            problems = config.slot_problems(self.slot)
            if problems:
                raise KeyFileError(f"{self._describe}: cannot program: " + "; ".join(problems))
            if config.data_locked:
                raise KeyFileError(f"{self._describe}: the data zone is already locked; slot {self.slot} can no "
                                   "longer be written (it is used as it is)")
            self._execute(transport, "Write slot", OP_WRITE, WRITE_DATA_32, self.slot << 3, secret)
            self._execute(transport, "Lock data zone", OP_LOCK, LOCK_DATA_NO_CRC, 0)
            probe = hashlib.sha256(b"vendor-node secure element probe" + config.serial).digest()
            answer = self._execute(transport, "MAC", OP_MAC, MAC_MODE, self.slot, probe)
        if answer != expected_mac(secret, probe, self.slot, config.serial):
            raise KeyFileError(f"{self._describe}: after programming, the chip's MAC differs from the host's: "
                               "the slot does not hold the secret written")

    def status(self) -> str:
        config = self.chip_config()
        problems = config.slot_problems(self.slot)
        state = ("; ".join(problems) if problems else
                 f"slot {self.slot} ready" if config.data_locked else
                 f"slot {self.slot} NOT programmed (data zone unlocked)")
        return f"serial {config.serial.hex()}, {state}"
