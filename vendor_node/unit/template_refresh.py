"""After a purchase: an employee matched under an older model's template gets one of the active model.

Why here and after the purchase: the refresh must never delay the board's approval, and it must use the
very frame that was just matched (no camera image is kept: the palm region lives only in the probe's
features until this returns). ``Recognizer.refreshed_template`` decides (a confident match only, no
clash with another employee's active-model template); the store keeps the old template beside the new
one (a template set: the old model still knows the employee when the new one misses), the employee's
consent, and queues it for upload like an enrollment; the gallery takes it in place, not rebuilt.
"""
from __future__ import annotations

import logging

log = logging.getLogger("vendor_node.unit")


def refresh_old_template(unit, features, match) -> bool:
    """Store the active model's template for ``match.employee_id`` when the recognizer says so; True if stored."""
    make = getattr(unit.recognizer, "refreshed_template", None)
    gallery = getattr(unit, "_gallery", None)
    if make is None or gallery is None or match is None or match.employee_id is None:
        return False
    try:
        template = make(features, match, gallery)
        if template is None:
            return False
        stored = unit.accounts.refresh_template(match.employee_id,
                                                lambda old: unit.recognizer.with_old_template(template, old))
        gallery.add(match.employee_id, stored)
        unit._gallery_key = unit.accounts.templates_revision()  # taken in place: no rebuild of everyone
    except Exception as exc:  # noqa: BLE001 - a refresh that fails must never stop the unit: the old template stays
        log.warning("template of %s not refreshed to %s: %s", match.employee_id, unit.recognizer.model_id, exc)
        return False
    log.info("template of %s refreshed from %s to %s", match.employee_id, match.model_id, unit.recognizer.model_id)
    return True
