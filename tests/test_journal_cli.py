"""`vendor-node journal verify|export|ack|open|review`: exit codes, messages, nothing lost on bad input."""
from __future__ import annotations

import json

import pytest

from vendor_node.cli import main
from vendor_node.money.journal import Journal


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch, tmp_path):
    monkeypatch.setenv("VENDOR_NODE_CONFIG", str(tmp_path / "config.toml"))
    (tmp_path / "config.toml").write_text('[unit]\nunit_id = "unit-test"\n')


@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    with Journal.open(state) as j:
        for amount, outcome in [(150, "succeed"), (200, "void"), (250, "unknown")]:
            s = j.begin_session()
            j.approve(s, "e1", "A1", amount)
            if outcome == "succeed":
                j.succeed(s)
            elif outcome == "void":
                j.void(s, "failed")
            else:
                j.mark_outcome_unknown(s)
    return state


def run(*argv):
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        return exc.code


def test_verify_ok(state, capsys):
    assert run("journal", "verify", "--state-dir", str(state)) == 0
    assert "journal OK: 9 entries" in capsys.readouterr().out


def test_verify_names_the_break_and_exits_1(state, capsys):
    with Journal.open(state) as j:
        j.conn.execute("DROP TRIGGER journal_no_update")
        j.conn.execute("UPDATE journal SET amount_cents = 15 WHERE seq = 3")
    assert run("journal", "verify", "--state-dir", str(state)) == 1
    err = capsys.readouterr().err
    assert err.startswith("journal BROKEN at seq 3:") and "amount_cents 15" in err


def test_verify_without_a_db_does_not_create_one(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert run("journal", "verify", "--state-dir", str(missing)) == 1
    assert "no unit database here" in capsys.readouterr().err
    assert not missing.exists()


def test_export_ack_cycle(state, tmp_path, capsys):
    out = tmp_path / "batch.json"
    assert run("journal", "export", "--out", str(out), "--state-dir", str(state)) == 0
    assert "9 entries (seq 1..9), 150 cents charged" in capsys.readouterr().out
    body = json.loads(out.read_text())["body"]
    assert body["unit_id"] == "unit-test" and body["batch_id"]
    assert (state / "keys" / "unit_signing.key").stat().st_mode & 0o077 == 0
    assert run("journal", "ack", "--batch", str(out), "--state-dir", str(state)) == 0
    assert "up to seq 9 are uploaded; 0 cents still unsynced" in capsys.readouterr().out
    assert run("journal", "ack", "--batch", str(out), "--state-dir", str(state)) == 0  # retry: fine


def test_export_to_a_missing_folder_fails_and_loses_nothing(state, tmp_path, capsys):
    assert run("journal", "export", "--out", str(tmp_path / "no" / "b.json"), "--state-dir", str(state)) == 1
    assert "does not exist" in capsys.readouterr().err
    with Journal.open(state) as j:
        assert j.unsynced_total_cents() == 150 and j.head()[0] == 9


def test_ack_of_a_forged_batch_fails(state, tmp_path, capsys):
    out = tmp_path / "batch.json"
    assert run("journal", "export", "--out", str(out), "--state-dir", str(state)) == 0
    doc = json.loads(out.read_text())
    doc["body"]["charged_cents"] = 0
    out.write_text(json.dumps(doc))
    assert run("journal", "ack", "--batch", str(out), "--state-dir", str(state)) == 1
    assert "signature does not verify" in capsys.readouterr().err
    with Journal.open(state) as j:
        assert j.uploaded_upto_seq() == 0


def test_open_and_review(state, capsys):
    assert run("journal", "open", "--state-dir", str(state)) == 0
    out = capsys.readouterr().out
    assert "unknown" in out and "250 cents" in out and "1 session(s) need attention" in out
    session = out.split()[1]
    assert run("journal", "review", session, "--not-charged", "--note", "no drop on camera",
               "--state-dir", str(state)) == 0
    assert "not charged: no drop on camera" in capsys.readouterr().out
    assert run("journal", "review", session, "--charged", "--state-dir", str(state)) == 1
    assert "already reviewed" in capsys.readouterr().err
    assert run("journal", "open", "--state-dir", str(state)) == 0
    assert "nothing open" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["journal"], "required"),
    (["journal", "export"], "--out"),
    (["journal", "ack"], "--batch"),
    (["journal", "ack", "--batch", "/no/such/batch.json"], "no such file"),
    (["journal", "review", "abc"], "one of the arguments --charged --not-charged is required"),
    (["journal", "review", "abc", "--charged", "--not-charged"], "not allowed with"),
    (["journal", "frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_message(argv, fragment, capsys):
    assert run(*argv) == 2
    assert fragment in capsys.readouterr().err


def test_review_of_an_unknown_session_fails(state, capsys):
    assert run("journal", "review", "nosuch", "--charged", "--state-dir", str(state)) == 1
    assert "session 'nosuch' is unknown to the journal" in capsys.readouterr().err


def test_export_to_an_unwritable_folder_fails_and_loses_nothing(state, tmp_path, capsys):
    # /proc refuses new files even to root; a chmod-ed folder would not stop root
    assert run("journal", "export", "--out", "/proc/vendor-node-batch.json", "--state-dir", str(state)) == 1
    assert "cannot write the journal batch" in capsys.readouterr().err
    with Journal.open(state) as j:
        assert j.unsynced_total_cents() == 150 and j.verify().ok
    assert run("journal", "export", "--out", str(tmp_path / "b.json"), "--state-dir", str(state)) == 0


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 50])
def test_a_damaged_db_file_is_reported_not_replaced(tmp_path, capsys, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "unit.db").write_bytes(content)
    assert run("journal", "verify", "--state-dir", str(state)) == 1
    err = capsys.readouterr().err
    assert "unit.db" in err and ("not a database" in err or "malformed" in err), err
    assert (state / "unit.db").read_bytes() == content


def test_state_dir_that_is_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run("journal", "verify", "--state-dir", str(a_file)) == 1
    err = capsys.readouterr().err
    assert str(a_file) in err and ("no unit database here" in err or "Not a directory" in err), err
