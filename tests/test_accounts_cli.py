"""The technician's commands end to end: keygen, provision, bundle, import, list, enroll, unenroll."""
import os
import re
import sys
import types

import cv2
import numpy as np
import pytest

from vendor_node.cli import main

CSV = ("employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\n"
       "E1,Ann Smith,20.00,,,,\n"
       "E2,Bob,5.50,suspended,payroll,2.00,\n"
       "E3,Cy,10,active,prepaid,,8.00\n")


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch):
    monkeypatch.delenv("VENDOR_NODE_CONFIG", raising=False)
    monkeypatch.delenv("VENDOR_NODE_HARDWARE", raising=False)


@pytest.fixture
def unit(tmp_path, capsys):
    """A provisioned unit with a fleet, and a CSV ready to bundle."""
    fleet, state = tmp_path / "fleet", tmp_path / "state"
    assert main(["fleet", "keygen", "--out", str(fleet)]) == 0
    assert main(["provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", "U1",
                 "--fleet-template-key", str(fleet / "fleet_template.key"), "--state-dir", str(state)]) == 0
    (tmp_path / "staff.csv").write_text(CSV)
    capsys.readouterr()
    return types.SimpleNamespace(tmp=tmp_path, fleet=fleet, state=state, csv=tmp_path / "staff.csv",
                                 key=fleet / "fleet_signing.key")


def make_bundle(unit, version, *extra, csv=None, unit_id="U1"):
    out = unit.tmp / f"b{version}.vnb"
    code = main(["fleet", "bundle", "--employees", str(csv or unit.csv), "--signing-key", str(unit.key),
                 "--out", str(out), "--unit-id", unit_id, "--version", str(version), *extra])
    return code, out


def test_provision_creates_keys(unit):
    keys = unit.state / "keys"
    assert {p.name for p in keys.iterdir()} == {"data.key", "unit_signing.key", "fleet_template.key"}
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in keys.iterdir())
    assert (unit.state / "unit_id").read_text().strip() == "U1"
    assert (unit.state / "unit_signing_public.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")


def test_bundle_import_list(unit, capsys):
    code, bundle = make_bundle(unit, 10)
    assert code == 0
    assert main(["accounts", "import", str(bundle), "--state-dir", str(unit.state)]) == 0
    assert "imported snapshot v10: 3 employees" in capsys.readouterr().out
    assert main(["accounts", "list", "--state-dir", str(unit.state)]) == 0
    out = capsys.readouterr().out
    assert "bundle v10 (snapshot)" in out and "in service" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["E1"].split() == ["E1", "Ann", "Smith", "active", "prepaid", "20.00", "no", "-"]
    assert "suspended" in lines["E2"] and "5.50" in lines["E2"]
    # the same bundle again: refused, exit 1, nothing changed
    assert main(["accounts", "import", str(bundle), "--state-dir", str(unit.state)]) == 1
    assert "not newer than the installed version 10" in capsys.readouterr().err


def test_delta_from_csv(unit, capsys):
    assert make_bundle(unit, 10)[0] == 0
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    delta_csv = unit.tmp / "delta.csv"
    delta_csv.write_text("employee_id,display_name,funds,status\nE2,Bob,0,deleted\nE4,Di,3,\n")
    code, delta = make_bundle(unit, 11, "--delta", "--base-version", "10", csv=delta_csv)
    assert code == 0
    assert main(["accounts", "import", str(delta), "--state-dir", str(unit.state)]) == 0
    capsys.readouterr()
    main(["accounts", "list", "--state-dir", str(unit.state)])
    out = capsys.readouterr().out
    assert "E4" in out and "deleted" in out


def test_bad_csv_fails_naming_the_line(unit, capsys):
    bad = unit.tmp / "bad.csv"
    bad.write_text("employee_id,display_name,funds\nE1,Ann,1\nE2,Bob,lots\n")
    code, out = make_bundle(unit, 5, csv=bad)
    assert code == 1 and not out.exists()
    assert "line 3, column funds" in capsys.readouterr().err


def test_tampered_bundle_is_refused_and_the_cache_is_unchanged(unit, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    capsys.readouterr()
    main(["accounts", "list", "--state-dir", str(unit.state)])
    before = capsys.readouterr().out
    _, bundle = make_bundle(unit, 11)
    data = bytearray(bundle.read_bytes())
    data[30] ^= 1
    bundle.write_bytes(bytes(data))
    assert main(["accounts", "import", str(bundle), "--state-dir", str(unit.state)]) == 1
    assert "bad signature" in capsys.readouterr().err
    main(["accounts", "list", "--state-dir", str(unit.state)])
    assert capsys.readouterr().out == before


@pytest.mark.parametrize("argv", [
    ["fleet", "bundle", "--employees", "{csv}", "--signing-key", "{key}", "--out", "{tmp}/x", "--unit-id", "U1", "--expires-days", "0"],
    ["fleet", "bundle", "--employees", "{csv}", "--signing-key", "{key}", "--out", "{tmp}/x", "--unit-id", "U1", "--version", "-3"],
    ["fleet", "bundle", "--employees", "{csv}", "--signing-key", "{key}", "--out", "{tmp}/x", "--unit-id", "U1", "--delta"],
    ["fleet", "bundle", "--employees", "{csv}", "--signing-key", "{key}", "--out", "{tmp}/x", "--unit-id", "U1", "--base-version", "2"],
    ["fleet", "bundle", "--employees", "{tmp}/none.csv", "--signing-key", "{key}", "--out", "{tmp}/x"],
    ["fleet", "bundle", "--signing-key", "{key}", "--out", "{tmp}/x"],
    ["accounts", "import", "{tmp}/missing.vnb", "--state-dir", "{state}"],
    ["accounts"],
    ["provision", "--fleet-public-key", "{fleet}/fleet_public_key.pem", "--unit-id", "no spaces", "--state-dir",
     "{state}"],
    ["enroll", "E1", "--state-dir", "{state}"],
    ["enroll", "E1", "--consent", "c1", "--images", "{tmp}/no-such-dir", "--state-dir", "{state}"],
])
def test_bad_arguments_exit_2(unit, argv, capsys):
    args = [a.format(csv=unit.csv, key=unit.key, tmp=unit.tmp, state=unit.state, fleet=unit.fleet) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip()
    assert not (unit.tmp / "x").exists()


def test_loose_key_file_is_refused(unit, capsys):
    os.chmod(unit.state / "keys" / "data.key", 0o644)
    assert main(["accounts", "list", "--state-dir", str(unit.state)]) == 1
    assert "too open" in capsys.readouterr().err


def test_provision_with_another_fleet_key_is_refused(unit, capsys):
    other = unit.tmp / "other"
    main(["fleet", "keygen", "--out", str(other)])
    assert main(["provision", "--fleet-public-key", str(other / "fleet_public_key.pem"), "--unit-id", "U1",
                 "--state-dir", str(unit.state)]) == 1
    assert "already pinned" in capsys.readouterr().err
    assert main(["fleet", "keygen", "--out", str(other)]) == 1


class FakeRecognizer:
    """Stands in for recognition.Recognizer: a template from the images' pixel statistics."""

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def enroll(self, images):
        used = [i for i, im in enumerate(images) if im.mean() > 10]
        rejected = [(i, "too_dark") for i, im in enumerate(images) if im.mean() <= 10]
        template = np.array([images[i].mean() for i in used], dtype=np.float32).tobytes()
        return types.SimpleNamespace(template=template, used=used, rejected=rejected)


@pytest.fixture
def fake_recognizer(monkeypatch):
    module = types.ModuleType("vendor_node.hand.recognition")
    module.Recognizer = FakeRecognizer
    monkeypatch.setitem(sys.modules, "vendor_node.hand.recognition", module)


def photos(folder, count=3, extra_file=None, dark=0):
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 40), 50 + i, np.uint8))
    for i in range(dark):
        cv2.imwrite(str(folder / f"dark{i}.png"), np.zeros((40, 40), np.uint8))
    if extra_file:
        (folder / extra_file).write_text("not an image")
    return folder


def test_enroll_from_images_then_unenroll(unit, fake_recognizer, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    folder = photos(unit.tmp / "hand", dark=1)
    assert main(["enroll", "E1", "--consent", "2026-01", "--images", str(folder), "--state-dir", str(unit.state)]) == 0
    out = capsys.readouterr().out
    assert "enrolled E1 (Ann Smith) from 3 of 4 images" in out and "queued for upload" in out
    assert "left out dark0.png: too_dark" in out
    main(["accounts", "list", "--state-dir", str(unit.state)])
    listing = capsys.readouterr().out
    e1 = next(line for line in listing.splitlines() if line.startswith("E1"))
    assert " yes " in e1
    assert main(["unenroll", "E1", "--state-dir", str(unit.state)]) == 0
    assert "template of E1 deleted" in capsys.readouterr().out
    assert main(["unenroll", "E1", "--state-dir", str(unit.state)]) == 0
    assert "no template stored for E1" in capsys.readouterr().out


def test_enroll_refuses_a_non_image_naming_it(unit, fake_recognizer, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    folder = photos(unit.tmp / "hand", extra_file="notes.txt")
    with pytest.raises(SystemExit) as info:
        main(["enroll", "E1", "--consent", "c1", "--images", str(folder), "--state-dir", str(unit.state)])
    assert info.value.code == 2
    assert "notes.txt is not an image" in capsys.readouterr().err


def test_enroll_unknown_employee_or_blank_consent(unit, fake_recognizer, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    folder = photos(unit.tmp / "hand")
    with pytest.raises(SystemExit):
        main(["enroll", "E9", "--consent", "c1", "--images", str(folder), "--state-dir", str(unit.state)])
    assert "unknown employee 'E9'" in capsys.readouterr().err
    assert main(["enroll", "E1", "--consent", " ", "--images", str(folder), "--state-dir", str(unit.state)]) == 1
    assert "consent version is required" in capsys.readouterr().err


def test_template_enrolled_at_one_unit_reaches_another_sealed(unit, fake_recognizer, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    main(["enroll", "E3", "--consent", "c1", "--images", str(photos(unit.tmp / "hand")),
          "--state-dir", str(unit.state)])
    exported = unit.tmp / "uploads.json"
    assert main(["accounts", "export-uploads", "--out", str(exported), "--mark-uploaded",
                 "--state-dir", str(unit.state)]) == 0
    assert '"employee_id": "E3"' in exported.read_text()
    second = unit.tmp / "second"
    main(["provision", "--fleet-public-key", str(unit.fleet / "fleet_public_key.pem"), "--unit-id", "U2",
          "--fleet-template-key", str(unit.fleet / "fleet_template.key"), "--state-dir", str(second)])
    code, bundle = make_bundle(unit, 11, "--templates", str(exported), "--per-day-cap", "9.00", unit_id="U2")
    assert code == 0
    assert main(["accounts", "import", str(bundle), "--state-dir", str(second)]) == 0
    capsys.readouterr()
    main(["accounts", "list", "--state-dir", str(second)])
    e3 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("E3"))
    assert " yes " in e3
    from vendor_node.money.accounts import AccountStore
    from vendor_node.config import Config

    with AccountStore.open(Config().replace(unit={"state_dir": second})) as store:
        assert store.policy()["per_day_cap_cents"] == 900
        assert store.pending_uploads() == []  # arrived from the fleet: nothing to send back
    main(["accounts", "export-uploads", "--out", str(exported), "--state-dir", str(unit.state)])
    assert exported.read_text().strip() == "[]"  # marked uploaded on the first unit


def test_bad_templates_file(unit, capsys):
    bad = unit.tmp / "t.json"
    bad.write_text('[{"employee_id": "E1", "sealed": "!!", "consent_version": "c", "consented_at": 1}]')
    assert make_bundle(unit, 5, "--templates", str(bad))[0] == 1
    assert "[0].sealed: not a base64 sealed template" in capsys.readouterr().err
    bad.write_text("{not json")
    assert make_bundle(unit, 5, "--templates", str(bad))[0] == 1
    assert "not a templates file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_bundle(unit, 5, "--per-day-cap", "ten")


def test_enroll_through_the_simulated_camera(unit, fake_recognizer, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    folder = photos(unit.tmp / "frames", count=2)
    config = unit.tmp / "config.toml"
    config.write_text(f'[camera]\nsim_folder = "{folder}"\n')
    assert main(["--config", str(config), "enroll", "E1", "--consent", "c1", "--sim",
                 "--state-dir", str(unit.state)]) == 0
    captured = capsys.readouterr()
    assert "presentation 5/5" in captured.err
    assert "enrolled E1 (Ann Smith) from 5 of 5 images" in captured.out


@pytest.mark.handdata
def test_enroll_real_photos_with_the_real_recognizer(unit, handdata, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    subject = sorted(p for p in (handdata / "coep_dev").iterdir() if p.is_dir())[0]
    assert main(["enroll", "E1", "--consent", "c1", "--images", str(subject), "--state-dir", str(unit.state)]) == 0
    assert "enrolled E1" in capsys.readouterr().out
    from vendor_node.money.accounts import AccountStore
    from vendor_node.config import Config

    with AccountStore.open(Config().replace(unit={"state_dir": unit.state})) as store:
        template = store.templates()["E1"]
    assert 0 < len(template) <= 1024


def test_provisioning_again_with_the_same_keys_is_harmless(unit, capsys):
    data_key = (unit.state / "keys" / "data.key").read_bytes()
    assert main(["provision", "--fleet-public-key", str(unit.fleet / "fleet_public_key.pem"), "--unit-id", "U1",
                 "--fleet-template-key", str(unit.fleet / "fleet_template.key"),
                 "--state-dir", str(unit.state)]) == 0
    assert (unit.state / "keys" / "data.key").read_bytes() == data_key
    with pytest.raises(SystemExit) as info:
        main(["provision", "--fleet-public-key", str(unit.fleet / "fleet_public_key.pem"), "--unit-id", "U2",
              "--state-dir", str(unit.state)])
    assert info.value.code == 2
    assert "already provisioned as 'U1'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--expires-days", "1e308"], "--expires-days: 1e308 days is more than 366"),
    (["--expires-days", "nan"], "--expires-days"),
    (["--version", str(2 ** 63)], "past the largest version"),
    (["--journal-position", "12"], "expected SEQ:HASH"),
    (["--journal-position", "0:" + "a" * 64], "genesis hash"),
    (["--unit-id", "unit 7\n"], "--unit-id: .* is not a valid unit id"),
])
def test_fleet_bundle_refuses_what_units_would_refuse(unit, extra, fragment, capsys):
    argv = ["fleet", "bundle", "--employees", str(unit.csv), "--signing-key", str(unit.key),
            "--out", str(unit.tmp / "x.vnb"), "--unit-id", "U1", *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert re.search(fragment, capsys.readouterr().err)
    assert not (unit.tmp / "x.vnb").exists()


def test_fleet_bundle_refuses_control_characters_in_names(unit, capsys):
    bad = unit.tmp / "bad.csv"
    bad.write_text("employee_id,display_name,funds\nE1,Ann\x1b[2J,1\n")
    code, out = make_bundle(unit, 5, csv=bad)
    assert code == 1 and not out.exists()
    assert "line 2, column display_name: contains the control character U+001B" in capsys.readouterr().err


def test_fleet_bundle_journal_position_counts_only_later_charges(unit, capsys):
    from vendor_node.config import Config
    from vendor_node.money.accounts import AccountStore

    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    cfg = Config().replace(unit={"state_dir": unit.state, "unit_id": "U1"})
    with AccountStore.open(cfg) as store:
        session = store.journal.begin_session()
        store.journal.approve(session, "E1", "A1", 300)
        store.journal.succeed(session)
        seq, digest = store.journal.head()
    # the office ingested the purchase (seq) and its ledger says 17.00 for Ann
    csv = unit.tmp / "after.csv"
    csv.write_text("employee_id,display_name,funds\nE1,Ann Smith,17.00\n")
    code, bundle = make_bundle(unit, 11, "--journal-position", f"{seq}:{digest}", csv=csv)
    assert code == 0 and f"journal position {seq}" in capsys.readouterr().out
    assert main(["accounts", "import", str(bundle), "--state-dir", str(unit.state)]) == 0
    with AccountStore.open(cfg) as store:
        assert store.funds_left_cents(store.employee("E1")) == 1700


def test_unenroll_of_nobody_is_an_error_and_queues_no_revocation(unit, capsys):
    make_bundle(unit, 10)
    main(["accounts", "import", str(unit.tmp / "b10.vnb"), "--state-dir", str(unit.state)])
    capsys.readouterr()
    assert main(["unenroll", "NOBODY", "--state-dir", str(unit.state)]) == 1
    assert "no employee 'NOBODY' on this unit" in capsys.readouterr().err
    from vendor_node.config import Config
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(Config().replace(unit={"state_dir": unit.state})) as store:
        assert store.unreported_revocations() == []
