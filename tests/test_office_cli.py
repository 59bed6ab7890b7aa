"""`vendor-node office ...` arguments: a clear error naming what is wrong, exit 2 for bad usage."""
from __future__ import annotations

import pytest

pytest.importorskip("django")


def test_demo_refuses_to_bind_anything_but_loopback(tmp_path, capsys):
    from vendor_node.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["office", "serve", "--demo", "--db", f"sqlite:///{tmp_path / 'o.db'}", "--bind", "0.0.0.0:8000"])
    assert exit_info.value.code == 2 and "loopback only" in capsys.readouterr().err
    assert not (tmp_path / "o.db").exists()  # refused before anything was created


@pytest.mark.parametrize("bind", ["8000", "host:", ":80", "127.0.0.1:99999"])
def test_bad_bind_is_named(bind, tmp_path, capsys):
    from vendor_node.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["office", "serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", "--bind", bind])
    assert exit_info.value.code == 2 and "--bind" in capsys.readouterr().err


@pytest.mark.parametrize("url, words", [("mysql://x/y", "expected sqlite"), ("sqlite://", "sqlite:///PATH"),
                                        ("postgresql://host:5432/", "name the database"),
                                        ("sqlite:////no/such/folder/o.db", "does not exist")])
def test_bad_database_urls_are_named(url, words):
    from vendor_node.errors import ConfigError
    from vendor_node.office.setup import database_from_url

    with pytest.raises(ConfigError, match=words):
        database_from_url(url)


def test_serve_without_fleet_keys_says_how_to_make_them(tmp_path, capsys):
    from vendor_node.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["office", "serve", "--db", f"sqlite:///{tmp_path / 'o.db'}"])
    assert exit_info.value.code == 2 and "fleet keygen" in capsys.readouterr().err
    assert main(["office", "serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", "--fleet-keys", str(tmp_path)]) == 1
    assert "fleet_signing.key" in capsys.readouterr().err
