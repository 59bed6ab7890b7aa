"""Unit keys: created 0600 once, never overwritten, refused when loose, short or not a key."""
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.errors import KeyFileError
from vendor_node.money.keys import (KeyStore, TemplateCipher, generate_fleet_keys, load_public_key_file,
                              load_signing_key_file, load_symmetric_key_file, public_key_to_pem)


def mode(path):
    return os.stat(path).st_mode & 0o777


def test_data_key_is_created_0600_once_and_reused(tmp_path):
    store = KeyStore(tmp_path)
    key = store.ensure_data_key()
    assert len(key) == 32
    assert mode(store.data_key_path) == 0o600
    assert mode(store.keys_dir) == 0o700
    assert store.ensure_data_key() == key
    assert KeyStore(tmp_path).load_data_key() == key


def test_data_key_is_never_overwritten(tmp_path):
    store = KeyStore(tmp_path)
    key = store.ensure_data_key()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        store.create_data_key()
    assert store.load_data_key() == key


def test_missing_data_key_is_a_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match="unit data key not found"):
        KeyStore(tmp_path).load_data_key()


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_loose_permissions_are_refused(tmp_path, loose):
    store = KeyStore(tmp_path)
    store.ensure_data_key()
    os.chmod(store.data_key_path, loose)
    with pytest.raises(KeyFileError, match=f"permissions {loose:04o} are too open"):
        store.load_data_key()
    with pytest.raises(KeyFileError):
        store.ensure_data_key()  # never "repaired" by making a new key


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_wrong_size_data_key_is_refused(tmp_path, size):
    store = KeyStore(tmp_path)
    store.keys_dir.mkdir(parents=True)
    fd = os.open(store.data_key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"k" * size)
    os.close(fd)
    with pytest.raises(KeyFileError, match=f"is {size} bytes, expected 32"):
        store.load_data_key()


def test_a_folder_instead_of_a_key_is_refused(tmp_path):
    store = KeyStore(tmp_path)
    store.data_key_path.mkdir(parents=True)
    with pytest.raises(KeyFileError, match="not a regular file"):
        store.load_data_key()


def test_unit_signing_key_round_trips(tmp_path):
    store = KeyStore(tmp_path)
    key = store.ensure_signing_key()
    assert mode(store.signing_key_path) == 0o600
    again = KeyStore(tmp_path).ensure_signing_key()
    assert public_key_to_pem(again.public_key()) == public_key_to_pem(key.public_key())


def test_signing_key_file_that_is_not_a_key(tmp_path):
    path = tmp_path / "k.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"hello")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_signing_key_file(path)


def test_fleet_keygen_writes_secrets_0600_and_refuses_to_overwrite(tmp_path):
    paths = generate_fleet_keys(tmp_path / "fleet")
    assert mode(paths["signing_key"]) == 0o600 and mode(paths["template_key"]) == 0o600
    signing = load_signing_key_file(paths["signing_key"])
    public = load_public_key_file(paths["public_key"])
    assert public_key_to_pem(public) == public_key_to_pem(signing.public_key())
    assert len(load_symmetric_key_file(paths["template_key"], "fleet template key")) == 32
    before = paths["signing_key"].read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_fleet_keys(tmp_path / "fleet")
    assert paths["signing_key"].read_bytes() == before


def test_pinning_a_different_fleet_key_needs_replace(tmp_path):
    store = KeyStore(tmp_path)
    first = public_key_to_pem(Ed25519PrivateKey.generate().public_key())
    second = public_key_to_pem(Ed25519PrivateKey.generate().public_key())
    store.pin_fleet_public_key(first)
    store.pin_fleet_public_key(first)  # the same key again is fine
    with pytest.raises(KeyFileError, match="different fleet public key is already pinned"):
        store.pin_fleet_public_key(second)
    assert public_key_to_pem(store.load_fleet_public_key()) == first
    store.pin_fleet_public_key(second, replace=True)
    assert public_key_to_pem(store.load_fleet_public_key()) == second


def test_fleet_key_problems(tmp_path):
    store = KeyStore(tmp_path)
    with pytest.raises(KeyFileError, match="no fleet public key pinned"):
        store.load_fleet_public_key()
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        store.pin_fleet_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    store.pin_fleet_public_key(public_key_to_pem(Ed25519PrivateKey.generate().public_key()))
    os.chmod(store.fleet_public_key_path, 0o666)
    with pytest.raises(KeyFileError, match="let others replace"):
        store.load_fleet_public_key()


def test_fleet_template_key_is_installed_once(tmp_path):
    store = KeyStore(tmp_path)
    key = os.urandom(32)
    store.install_fleet_template_key(key)
    store.install_fleet_template_key(key)
    with pytest.raises(KeyFileError, match="different fleet template key"):
        store.install_fleet_template_key(os.urandom(32))
    with pytest.raises(KeyFileError, match="32"):
        KeyStore(tmp_path / "other").install_fleet_template_key(b"short")
    assert store.load_fleet_template_key() == key


def test_unit_id_is_fixed_at_provisioning(tmp_path):
    store = KeyStore(tmp_path)
    assert store.read_unit_id() is None
    store.write_unit_id("U1")
    store.write_unit_id("U1")
    with pytest.raises(KeyFileError, match="already provisioned as 'U1'"):
        store.write_unit_id("U2")


def test_template_cipher_binds_employee_and_purpose():
    key = os.urandom(32)
    cipher = TemplateCipher(key, b"storage")
    sealed = cipher.seal("E1", b"template")
    assert cipher.open("E1", sealed) == b"template"
    assert cipher.seal("E1", b"template") != sealed  # a fresh nonce each time
    with pytest.raises(InvalidTag):
        cipher.open("E2", sealed)  # swapped between rows
    with pytest.raises(InvalidTag):
        TemplateCipher(key, b"transport").open("E1", sealed)
    with pytest.raises(InvalidTag):
        TemplateCipher(os.urandom(32), b"storage").open("E1", sealed)
    with pytest.raises(InvalidTag):
        cipher.open("E1", sealed[:10])
