"""The unit's key store with its board key source, and the template guard made from it.

money and devices never import each other, so every command that opens the unit's keys goes
through ``unit_keystore(cfg)``: in ``otp`` mode the store gets the board's OTP reader (emulated by
a file when ``keys.otp_file`` is set), in ``secure_element`` mode the chip's answer to the state
directory's challenge (an emulated chip when ``keys.secure_element.emulated_file`` is set), in
``software`` mode plain files. ``check_unit_keys`` is the start-up check: a copied state directory,
or key files without their board's secret, stop the unit with the cause instead of running with
keys it cannot open.
"""
from __future__ import annotations

from ..devices.otp import otp_source, outside_state_dir
from ..devices.secure_element import SecureElement
from ..errors import KeyFileError, RecognitionError
from ..hand.gallery import Gallery
from ..hand.template_guard import TemplateGuard, guard_id_of_template
from ..money.key_wrap import template_guard_key_from_fleet, wrap_challenge
from ..money.keys import KeyStore


def secure_element_source(keys_cfg, state_dir, **options) -> SecureElement:
    """The chip ``[keys.secure_element]`` names: on the I2C bus, or an emulated chip file outside the state dir."""
    se = keys_cfg.secure_element
    if se.slot is None:
        raise KeyFileError("keys.secure_element.slot: required when keys.mode = \"secure_element\"")
    if se.emulated_file is not None:
        from ..devices.secure_element_emulator import EmulatedChip

        path = outside_state_dir(se.emulated_file, state_dir, "keys.secure_element.emulated_file", "an emulated chip")
        return SecureElement(EmulatedChip(path).open, se.slot, f"emulated secure element {path} slot {se.slot}",
                             **options)
    from ..devices.secure_element_i2c import I2cTransport

    return SecureElement(lambda: I2cTransport(se.bus, se.address), se.slot,
                         f"ATECC608 on /dev/i2c-{se.bus} at 0x{se.address:02x} slot {se.slot}", **options)


def board_key_source(cfg):
    """The OTP key or the secure element ``[keys]`` names (None in software mode); nothing is read yet."""
    if cfg.keys.mode == "otp":
        return otp_source(cfg.keys, cfg.state_dir)
    if cfg.keys.mode == "secure_element":
        return secure_element_source(cfg.keys, cfg.state_dir)
    return None


def unit_keystore(cfg) -> KeyStore:
    if cfg.keys.mode == "otp":
        return KeyStore.from_config(cfg, lambda: otp_source(cfg.keys, cfg.state_dir).read())  # errors when used
    if cfg.keys.mode == "secure_element":
        store = KeyStore.from_config(cfg)
        return KeyStore.from_config(cfg, lambda: secure_element_source(cfg.keys, cfg.state_dir).respond(
            wrap_challenge(store.keys_dir)))
    return KeyStore.from_config(cfg)


def check_unit_keys(cfg) -> KeyStore:
    """Open every key this unit has (KeyFileError naming the cause: another board, no OTP key, plain files)."""
    store = unit_keystore(cfg)
    store.check_board()
    if store.has_data_key():
        store.load_data_key()
    if store.signing_key_path.exists():
        store.load_signing_key()
    if store.has_fleet_template_key():
        store.load_fleet_template_key()
    if store.has_template_guard_key():
        store.load_template_guard_key()
    return store


def unit_template_guard(store: KeyStore) -> TemplateGuard:
    """The guard templates are stored under: an installed one (after a renewal, or given at provisioning), else
    the fleet's, derived from the fleet template key (no extra file), else a lone unit's own, made once."""
    if store.has_template_guard_key():
        return TemplateGuard(store.load_template_guard_key())
    if store.has_fleet_template_key():
        return TemplateGuard(template_guard_key_from_fleet(store.load_fleet_template_key()))
    return TemplateGuard(store.ensure_template_guard_key())


def adopt_clear_templates(accounts, guard: TemplateGuard) -> int:
    """Clear templates (stored by firmware from before guarding) moved into the guarded domain, in place and
    without any image; how many. Unreadable ones are left as they are: the gallery leaves them out by name."""
    clear = sum(_adoptable(t) for t in accounts.templates().values())
    if clear:
        accounts.retransform_templates(lambda templates: [guard.protect(t) if _adoptable(t) else t
                                                          for t in templates])
    return clear


def _adoptable(template: bytes) -> bool:
    try:
        return guard_id_of_template(template) == 0
    except RecognitionError:
        return False


def guarded_gallery(guard: TemplateGuard):
    """The unit's gallery factory: everything in ``guard``'s domain (a clear template from an old bundle is
    protected in memory); a template under another fleet's guard is refused by name, so it alone is left out."""
    def build(templates: dict[str, bytes]) -> Gallery:
        ready = []
        for employee_id, template in templates.items():
            guard_id = guard_id_of_template(template, f"template of {employee_id}")
            if guard_id and guard_id != guard.guard_id:
                raise RecognitionError(f"template of {employee_id} was made under another template guard")
            ready.append(template if guard_id else guard.protect(template))
        return Gallery.from_rows(list(templates), ready)
    return build


def renew_templates(templates: list[bytes], old, new) -> list[bytes]:
    """Each template under ``new``: clear ones protected, ``old`` ones renewed, ``new`` ones kept (a renewal
    interrupted after the database but before the key file was replaced is simply run again)."""
    out = list(templates)
    todo = [i for i, t in enumerate(templates) if guard_id_of_template(t, f"template {i}") != new.guard_id]
    renewed = old.renew_many([old.adopt(templates[i]) for i in todo], new)
    for i, data in zip(todo, renewed):
        out[i] = data
    return out

