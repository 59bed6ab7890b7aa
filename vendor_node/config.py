"""Strict unit configuration (TOML).

Every section is a frozen dataclass; unknown keys are rejected and every error
names the key path (``board.baudrate: expected an integer, got 'fast'``), so a
technician with a typo finds it before the unit goes into service.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/vendor-node/config.toml")
CONFIG_ENV = "VENDOR_NODE_CONFIG"
HARDWARE_ENV = "VENDOR_NODE_HARDWARE"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "firmware_assets"


def setting(default, low, high):
    """A numeric key with its allowed range (inclusive): a value outside it is an error naming the key and the range."""
    return field(default=default, metadata={"range": (low, high)})


@dataclass(frozen=True)
class UnitConfig:
    """Where the unit keeps its state and which hardware backend it drives."""

    unit_id: str = "unit-dev"
    state_dir: Path = Path("/var/lib/vendor-node")
    hardware: typing.Literal["pi", "sim"] = "pi"
    assets_dir: Path = ASSETS_DIR


@dataclass(frozen=True)
class CameraConfig:
    """A small greyscale stream kept running, exposure fixed for the IR light."""

    width: int = setting(640, 64, 4096)
    height: int = setting(480, 48, 4096)
    exposure_us: int = setting(4000, 10, 1_000_000)
    analogue_gain: float = setting(2.0, 1.0, 16.0)
    frame_timeout_s: float = setting(0.5, 0.05, 10.0)
    sim_folder: Path | None = None


@dataclass(frozen=True)
class GpioConfig:
    """BCM pin numbers of the IR proximity sensor, the status LED and the buzzer."""

    proximity_pin: int = setting(17, 0, 27)
    proximity_active_low: bool = True
    led_red_pin: int = setting(22, 0, 27)
    led_green_pin: int = setting(27, 0, 27)
    led_blue_pin: int = setting(24, 0, 27)
    buzzer_pin: int = setting(23, 0, 27)


@dataclass(frozen=True)
class BoardConfig:
    """The serial MDB adapter that speaks for us on the vending machine's bus."""

    port: str = "/dev/ttyAMA0"
    baudrate: int = setting(115200, 1200, 4_000_000)
    reply_timeout_s: float = setting(1.0, 0.05, 10.0)
    selection_timeout_s: float = setting(30.0, 1.0, 600.0)
    vend_outcome_timeout_s: float = setting(60.0, 1.0, 600.0)
    hand_wait_s: float = setting(10.0, 1.0, 120.0)
    reconnect_max_backoff_s: float = setting(30.0, 0.1, 600.0)
    # How the adapter writes money: "decimal" currency units ("1.50", Qibixx default with 2 decimals)
    # or "cents" (a scaled integer, "150"); the unit sets the adapter's mdb-decimal-places to match.
    price_format: typing.Literal["decimal", "cents"] = "decimal"
    # The adapter's settings a site must choose (docs' names; sent with C,SETCONF at every start, see
    # devices/board_setup.py): "0x1" + the ISO 4217 numeric currency code, and the cashless address.
    mdb_currency_code: str = "0x1978"
    mdb_address: typing.Literal["0x10", "0x60"] = "0x10"
    # C,START tries while the machine answers busy, and the pause between them (like real clients)
    start_attempts: int = setting(12, 1, 30)
    start_retry_s: float = setting(0.4, 0.0, 5.0)

    def __post_init__(self):
        check_mdb_currency_code(self.mdb_currency_code)


def check_mdb_currency_code(code) -> str:
    """ "0x1" + a 3-digit ISO 4217 numeric code, as the adapter's mdb-currency-code takes it."""
    if not isinstance(code, str) or len(code) != 6 or not code.startswith("0x1") or not code[3:].isdigit():
        raise ConfigError(f"board.mdb_currency_code: must be 0x1 and the 3-digit ISO 4217 numeric code "
                          f"(0x1978 EUR, 0x1840 USD, 0x1756 CHF, 0x1826 GBP), got {code!r}")
    return code


@dataclass(frozen=True)
class RecognitionConfig:
    """Decision policy of the 1:N matcher (see README: what the thresholds mean)."""

    threshold: float | None = setting(None, 0.0, 1.0)  # None: the operating threshold from the model manifest
    margin: float | None = setting(None, 0.0, 1.0)  # None: the margin from the model manifest
    max_attempts: int = setting(2, 1, 5)  # a second presentation when unsure
    # The projected wrong-payer rate per stranger presentation the threshold is set for, whatever the gallery
    # size (an embedding model's threshold is the one at FMR = max_wrong_payer / enrolled; hand/decision.py)
    max_wrong_payer: float = setting(1e-3, 1e-9, 0.1)
    # Threads the palm-code 1:N passes are split over (the unit's loop waits on the match): 0 = one per core, at
    # most 4 (a Pi 4 or Zero 2 W has 4); 1 = the caller's thread only
    match_threads: int = setting(0, 0, 8)
    keep_debug_images: bool = False  # images are kept only when a technician turns this on


@dataclass(frozen=True)
class AccountsConfig:
    """Offline floor limits, like a card terminal's (amounts in cents)."""

    fleet_public_key: Path | None = None  # None: <state_dir>/fleet_public_key.pem
    max_offline_age_h: float = setting(72.0, 1.0, 24.0 * 31)
    per_day_cap_cents: int = setting(1500, 0, 10_000_000)
    unsynced_total_cap_cents: int = setting(25000, 0, 100_000_000)
    template_retention_days: int = setting(365, 1, 3650)


@dataclass(frozen=True)
class AbuseConfig:
    """Cool down after too many unknown hands or refusals in a short window."""

    max_failures: int = setting(5, 1, 1000)
    window_s: float = setting(60.0, 1.0, 86400.0)
    cooldown_s: float = setting(120.0, 0.0, 86400.0)


@dataclass(frozen=True)
class SyncConfig:
    """The nightly sync: where bundles come from and journals go."""

    server_url: str = ""
    timeout_s: float = setting(30.0, 1.0, 600.0)  # one request at most (and never past max_run_s)
    max_run_s: float = setting(240.0, 5.0, 3600.0)  # the whole run, retries included (a dripping server too)
    max_bundle_bytes: int = setting(64 * 1024 * 1024, 1024 * 1024, 160 * 1024 * 1024)  # refused before reading
    allow_insecure_http: bool = False  # plain http:// only to loopback unless this is set (test networks)
    ca_file: Path | None = None  # a private CA (PEM) the office's certificate chains to; None: the system's CAs


@dataclass(frozen=True)
class SecureElementConfig:
    """keys.mode = "secure_element": an ATECC608-class chip on the Pi's I2C bus (devices/secure_element.py)."""

    bus: int = setting(1, 0, 255)  # /dev/i2c-N (1: the header's SDA/SCL, GPIO 2/3)
    address: int = setting(0x60, 0x08, 0x77)  # 7-bit, as i2cdetect shows it (CryptoAuthLib writes 0x60 as 0xC0)
    slot: int | None = setting(None, 0, 15)  # the slot holding the chip's secret; required in this mode
    # an emulated chip (simulator, tests): a file outside the state dir, standing in for the bus
    emulated_file: Path | None = None


@dataclass(frozen=True)
class KeysConfig:
    """How the unit's key files are protected (docs/threat-model.md): "otp" and "secure_element" bind them
    to this board."""

    # software: plain files, reported as a warning
    mode: typing.Literal["software", "otp", "secure_element"] = "software"
    # otp mode: None reads the Pi's OTP device key (vcmailbox); a path is an emulated OTP key (32 bytes,
    # simulator and tests), kept outside the state dir so a copied state dir does not carry it
    otp_file: Path | None = None
    secure_element: SecureElementConfig = field(default_factory=SecureElementConfig)

    def __post_init__(self):
        if self.mode == "secure_element" and self.secure_element.slot is None:
            raise ConfigError("keys.secure_element.slot: required when keys.mode = \"secure_element\" (the chip's "
                              "slot, 0-15, that holds its secret: see `vendor-node keys program-secure-element`)")


@dataclass(frozen=True)
class Config:
    unit: UnitConfig = field(default_factory=UnitConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    board: BoardConfig = field(default_factory=BoardConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)

    @property
    def state_dir(self) -> Path:
        return self.unit.state_dir

    @property
    def fleet_public_key_path(self) -> Path:
        return self.accounts.fleet_public_key or self.unit.state_dir / "fleet_public_key.pem"

    def replace(self, **sections: dict) -> "Config":
        """A copy with some keys changed, e.g. ``cfg.replace(unit={"hardware": "sim"})``."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()
        }
        return dataclasses.replace(self, **changed)


def _coerce(value, annotation, path: str):
    """Check one value against its annotation; raise ConfigError naming the key path."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path}: must be one of {choices}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{path}: must not be negative, got {value}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{path}: must not be negative, got {value}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported setting type {annotation!r}")  # a bug in this module


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key (known keys{' in [' + prefix + ']' if prefix else ''}: "
            f"{', '.join(sorted(known))})"
        )
    values = {}
    ranges = {f.name: f.metadata.get("range") for f in dataclasses.fields(cls)}
    for name, raw in data.items():
        path = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw, path)
        else:
            values[name] = _check_range(_coerce(raw, hint, path), ranges[name], path)
    return cls(**values)


def _check_range(value, allowed, path: str):
    """A numeric value inside its declared range (``setting(default, low, high)``), else ConfigError naming both."""
    if allowed is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    low, high = allowed
    if not low <= value <= high:
        raise ConfigError(f"{path}: must be between {_plain(low)} and {_plain(high)}, got {_plain(value)}")
    return value


def _plain(number) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def numeric_keys_without_range(cls=None, prefix: str = "") -> list[str]:
    """Key paths of numeric settings that declare no range (a test keeps this list empty)."""
    cls = cls or Config
    hints, missing = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint, path = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            missing += numeric_keys_without_range(hint, path + ".")
        elif {int, float} & set(typing.get_args(hint) or (hint,)) and "range" not in f.metadata:
            missing.append(path)
    return missing


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse TOML text into a Config, strictly."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: Path | str | None = None, *, hardware: str | None = None,
                state_dir: Path | str | None = None) -> Config:
    """Load the unit's config.

    ``path`` falls back to $VENDOR_NODE_CONFIG, then /etc/vendor-node/config.toml;
    when none exists the defaults apply. ``VENDOR_NODE_HARDWARE=sim`` (or
    ``hardware="sim"``) selects the simulated backend.
    """
    explicit = path is not None or CONFIG_ENV in os.environ
    path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        cfg = parse_config(text, str(path))
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    else:
        cfg = Config()
    hardware = hardware or os.environ.get(HARDWARE_ENV)
    if hardware:
        if hardware not in ("pi", "sim"):
            raise ConfigError(f"{HARDWARE_ENV}: must be 'pi' or 'sim', got {hardware!r}")
        cfg = cfg.replace(unit={"hardware": hardware})
    if state_dir is not None:
        cfg = cfg.replace(unit={"state_dir": Path(state_dir)})
    return cfg
