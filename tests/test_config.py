"""The strict config loader: unknown keys rejected, every error names its key path."""
from pathlib import Path

import pytest

from vendor_node.assets import active_manifest_path
from vendor_node.config import Config, load_config, parse_config
from vendor_node.errors import ConfigError


def test_empty_config_gives_defaults():
    cfg = parse_config("")
    assert cfg == Config()
    assert cfg.accounts.per_day_cap_cents == 1500
    assert cfg.accounts.unsynced_total_cap_cents == 25000
    assert cfg.accounts.max_offline_age_h == 72.0


def test_values_are_read_and_typed():
    cfg = parse_config('[unit]\nstate_dir = "/tmp/x"\nhardware = "sim"\n[board]\nbaudrate = 9600\n[abuse]\nwindow_s = 30\n')
    assert cfg.unit.state_dir == Path("/tmp/x")
    assert cfg.unit.hardware == "sim"
    assert cfg.board.baudrate == 9600
    assert cfg.abuse.window_s == 30.0 and isinstance(cfg.abuse.window_s, float)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[board]\nbaud = 9600\n", "board.baud: unknown key"),
        ("[nosuch]\nx = 1\n", "nosuch: unknown key"),
        ('[board]\nbaudrate = "fast"\n', "board.baudrate: expected an integer"),
        ('[unit]\nhardware = "arduino"\n', "unit.hardware: must be one of"),
        ("[accounts]\nper_day_cap_cents = -5\n", "accounts.per_day_cap_cents: must not be negative"),
        ("[recognition]\nkeep_debug_images = 1\n", "recognition.keep_debug_images: expected true or false"),
        ("board = 3\n", "board: expected a table"),
        ("[board\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "unit.toml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("unit.toml: ")


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_hardware_override_and_state_dir(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('[unit]\nhardware = "pi"\n')
    monkeypatch.setenv("VENDOR_NODE_HARDWARE", "sim")
    cfg = load_config(path, state_dir=tmp_path / "state")
    assert cfg.unit.hardware == "sim"
    assert cfg.state_dir == tmp_path / "state"
    monkeypatch.setenv("VENDOR_NODE_HARDWARE", "gpio")
    with pytest.raises(ConfigError, match="VENDOR_NODE_HARDWARE"):
        load_config(path)


def test_example_config_parses_strictly():
    example = Path(__file__).resolve().parents[1] / "firmware_assets" / "config.example.toml"
    parse_config(example.read_text(), str(example))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[board]\nbaudrate = 0\n", "board.baudrate: must be between 1200 and 4000000, got 0"),
        ("[board]\nhand_wait_s = nan\n", "board.hand_wait_s: expected a finite number"),
        ("[board]\nvend_outcome_timeout_s = inf\n", "board.vend_outcome_timeout_s: expected a finite number"),
        ("[camera]\nwidth = 0\nheight = 0\n", "camera.width: must be between 64 and 4096"),
        ("[recognition]\nmax_attempts = 0\n", "recognition.max_attempts: must be between 1 and 5"),
        ("[recognition]\nthreshold = 1.5\n", "recognition.threshold: must be between 0 and 1"),
        ("[accounts]\ntemplate_retention_days = 0\n", "accounts.template_retention_days: must be between 1 and 3650"),
        ("[accounts]\nper_day_cap_cents = 100000000000000000000\n", "accounts.per_day_cap_cents: must be between 0"),
        ("[abuse]\nmax_failures = 0\n", "abuse.max_failures: must be between 1 and 1000"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_key_and_range(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "unit.toml")
    assert fragment in str(info.value)


def test_every_numeric_key_declares_its_range():
    from vendor_node.config import numeric_keys_without_range

    assert numeric_keys_without_range() == [], "declare these with setting(default, low, high)"


def test_the_matcher_cannot_be_loosened_below_the_manifest_floor():
    """threshold = 0, margin = 0 once let a simulation charge strangers to employees: the unit refuses to load it."""
    import json

    from vendor_node.hand import Recognizer

    cfg = parse_config("[recognition]\nthreshold = 0.0\nmargin = 0.0\n")
    floor = json.loads(active_manifest_path(cfg.unit.assets_dir).read_text())["decision"]
    with pytest.raises(ConfigError, match=rf"recognition.threshold: must be at least {floor['min_threshold']:g} "):
        Recognizer.from_config(cfg)
    with pytest.raises(ConfigError, match="recognition.margin: must be at least"):
        Recognizer.from_config(parse_config(f"[recognition]\nmargin = {floor['min_margin'] / 2}\n"))
    ok = Recognizer.from_config(parse_config(f"[recognition]\nthreshold = {floor['min_threshold']}\n"))
    assert ok.threshold == floor["min_threshold"]
