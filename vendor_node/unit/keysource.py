"""The unit's key store with its board key source, and the template guard made from it.

money and devices never import each other, so every command that opens the unit's keys goes
through ``unit_keystore(cfg)``: in ``otp`` mode the store gets the board's OTP reader (emulated by
a file when ``keys.otp_file`` is set), in ``software`` mode plain files. ``check_unit_keys`` is the
start-up check: a copied state directory, or key files without their board's OTP key, stop the unit
with the cause instead of running with keys it cannot open.
"""
from __future__ import annotations

from ..devices.otp import otp_source
from ..errors import RecognitionError
from ..hand.gallery import Gallery
from ..hand.template_guard import TemplateGuard, guard_id_of_template
from ..money.key_wrap import template_guard_key_from_fleet
from ..money.keys import KeyStore


def unit_keystore(cfg) -> KeyStore:
    if cfg.keys.mode != "otp":
        return KeyStore.from_config(cfg)
    return KeyStore.from_config(cfg, lambda: otp_source(cfg.keys, cfg.state_dir).read())  # errors when used


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

