"""Templates stored only under a fleet secret: the same scores, noise under another fleet, renewable without images."""
import os
import types

import cv2
import numpy as np
import pytest

from vendor_node.cli import main
from vendor_node.config import ASSETS_DIR, Config, load_config
from vendor_node.errors import RecognitionError
from vendor_node.hand import palmcode
from vendor_node.hand.gallery import parse_template
from vendor_node.hand.recognition import Gallery, Recognizer
from vendor_node.hand.model import Embedder
from vendor_node.hand.template_guard import GuardedTemplate, TemplateGuard, guard_id_of_template, is_guarded
from vendor_node.sim.drawn_hands import draw_hand

PEOPLE = range(1, 7)


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch):
    monkeypatch.delenv("VENDOR_NODE_CONFIG", raising=False)
    monkeypatch.delenv("VENDOR_NODE_HARDWARE", raising=False)


@pytest.fixture(scope="module")
def hands():
    """Drawn hands: two enrollment frames and one later probe per person, coded by the palm-code model."""
    recognizer = Recognizer(Embedder.load(ASSETS_DIR / "palm-gabor-1"))
    enroll = {f"p{p}": [recognizer.features(draw_hand(p, s)) for s in (0, 1)] for p in PEOPLE}
    probes = [recognizer.features(draw_hand(p, 7)) for p in PEOPLE]
    clear = {k: recognizer.enroll_features(v).template for k, v in enroll.items()}
    return types.SimpleNamespace(recognizer=recognizer, enroll=enroll, probes=probes, clear=clear)


def guarded_recognizer(guard, every_shipped_model: bool = False):
    """The palm-code model's recognizer under ``guard`` (or the unit's, with every shipped model)."""
    recognizer = (Recognizer.from_config(Config()) if every_shipped_model
                  else Recognizer(Embedder.load(ASSETS_DIR / "palm-gabor-1")))
    recognizer.guard = guard
    return recognizer


def test_scores_and_decisions_are_exactly_the_same_under_the_guard(hands):
    before = hands.recognizer.score_matrix(hands.probes, Gallery.from_templates(hands.clear))
    guard = TemplateGuard(os.urandom(32))
    recognizer = guarded_recognizer(guard)
    gallery = Gallery.from_templates({k: guard.protect(t) for k, t in hands.clear.items()})
    assert gallery.guard_id == guard.guard_id
    after = recognizer.score_matrix(hands.probes, gallery)
    np.testing.assert_array_equal(before, after)  # not close: equal, bit for bit
    clear_gallery = Gallery.from_templates(hands.clear)
    for probe in hands.probes:
        assert recognizer.identify(probe, gallery) == hands.recognizer.identify(probe, clear_gallery)
    assert [recognizer.identify(p, gallery).employee_id for p in hands.probes] == [f"p{p}" for p in PEOPLE]


def test_enrollment_by_a_guarded_recognizer_stores_only_the_guarded_form(hands):
    guard = TemplateGuard(os.urandom(32))
    recognizer = guarded_recognizer(guard)
    template = recognizer.enroll_features(hands.enroll["p1"]).template
    assert is_guarded(template) and template == guard.protect(hands.clear["p1"])
    assert guard.reveal(template) == hands.clear["p1"]
    parsed = parse_template(template)
    assert isinstance(parsed, GuardedTemplate) and parsed.guard_id == guard.guard_id


def test_a_template_from_another_fleet_is_noise_here(hands):
    """Unlinkable: the same hand under two fleet secrets shares nothing a matcher can use."""
    a, b = TemplateGuard(os.urandom(32)), TemplateGuard(os.urandom(32))
    ta, tb = (GuardedTemplate.from_bytes(g.protect(hands.clear["p2"])) for g in (a, b))
    common = ta.valid & tb.valid
    differing = (ta.planes != tb.planes)[:, common].mean()
    assert 0.4 < differing < 0.6  # chance level, not the ~0.1 of a genuine pair
    gallery = Gallery.from_templates({"p2": b.protect(hands.clear["p2"])})
    with pytest.raises(RecognitionError, match="another template guard secret"):
        guarded_recognizer(a).identify(hands.probes[1], gallery)
    with pytest.raises(RecognitionError, match="no template guard key"):
        hands.recognizer.identify(hands.probes[1], gallery)
    with pytest.raises(RecognitionError, match="different template guards"):
        Gallery.from_templates({"x": a.protect(hands.clear["p1"]), "y": b.protect(hands.clear["p2"])})


def test_renewal_round_trip_without_any_image(hands):
    old, new = TemplateGuard(os.urandom(32)), TemplateGuard(os.urandom(32))
    stored = {k: old.protect(t) for k, t in hands.clear.items()}
    renewed = dict(zip(stored, old.renew_many(list(stored.values()), new)))
    assert all(renewed[k] == old.renew(stored[k], new) for k in stored)  # batch = one by one
    assert all(new.reveal(renewed[k]) == hands.clear[k] for k in stored)
    assert not any(renewed[k] == stored[k] for k in stored)
    with pytest.raises(RecognitionError, match="another template guard secret"):
        old.reveal(renewed["p1"])  # the old secret no longer opens anything
    before = guarded_recognizer(old).score_matrix(hands.probes, Gallery.from_templates(stored))
    after = guarded_recognizer(new).score_matrix(hands.probes, Gallery.from_templates(renewed))
    np.testing.assert_array_equal(before, after)


def test_layout_is_fixed_by_the_secret_alone():
    """Derived with SHAKE-256, not numpy's generators: a numpy upgrade cannot scramble stored templates."""
    secret = bytes(range(32))
    order, xor = TemplateGuard(secret).layout((32, 32))
    again = TemplateGuard(bytes(secret)).layout((32, 32))
    assert np.array_equal(order, again[0]) and np.array_equal(xor, again[1])
    assert sorted(order.tolist()) == list(range(1024)) and 0.45 < xor.mean() < 0.55
    assert order[:4].tolist() == TemplateGuard(secret).layout((32, 32))[0][:4].tolist()
    assert not np.array_equal(order, TemplateGuard(bytes(32 - 1) + b"\x01").layout((32, 32))[0])


def test_guarded_templates_are_checked_like_clear_ones(hands):
    data = bytearray(TemplateGuard(os.urandom(32)).protect(hands.clear["p1"]))
    with pytest.raises(RecognitionError, match="truncated"):
        parse_template(bytes(data[:-3]))
    data[40] ^= 1
    with pytest.raises(RecognitionError, match="checksum mismatch"):
        parse_template(bytes(data))
    with pytest.raises(RecognitionError, match="32 bytes"):
        TemplateGuard(b"short")


# --- on the unit: enroll, renew with the CLI, adopt a store from before guarding ------------------------
@pytest.fixture
def unit(tmp_path, capsys):
    fleet, state = tmp_path / "fleet", tmp_path / "state"
    assert main(["fleet", "keygen", "--out", str(fleet)]) == 0
    assert main(["provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", "U1",
                 "--fleet-template-key", str(fleet / "fleet_template.key"), "--state-dir", str(state)]) == 0
    csv = tmp_path / "staff.csv"
    csv.write_text("employee_id,display_name,funds,status,funding,per_purchase_cap,per_day_cap\n"
                   + "".join(f"p{p},P{p},10.00,,,,\n" for p in PEOPLE))
    bundle = tmp_path / "b1.vnb"
    assert main(["fleet", "bundle", "--employees", str(csv), "--signing-key", str(fleet / "fleet_signing.key"),
                 "--out", str(bundle), "--unit-id", "U1", "--version", "1"]) == 0
    assert main(["accounts", "import", str(bundle), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    return types.SimpleNamespace(tmp=tmp_path, state=state, cfg=Config().replace(unit={"state_dir": state}))


def enroll_drawn(unit, person):
    folder = unit.tmp / f"hand{person}"
    folder.mkdir()
    for s in (0, 1):
        cv2.imwrite(str(folder / f"{s}.png"), draw_hand(person, s))
    assert main(["enroll", f"p{person}", "--consent", "c1", "--images", str(folder),
                 "--state-dir", str(unit.state)]) == 0


def stored_templates(unit):
    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(unit.cfg) as store:
        return store.templates(), [row[1] for row in store.pending_uploads()]


def test_cli_enrollment_stores_guarded_templates_and_renewal_keeps_every_score(hands, unit, capsys):
    from vendor_node.money.keys import KeyStore
    from vendor_node.unit.keysource import unit_template_guard

    for p in (1, 2, 3):
        enroll_drawn(unit, p)
    templates, queued = stored_templates(unit)
    old = unit_template_guard(KeyStore.from_config(unit.cfg))
    assert all(is_guarded(t) for t in templates.values()) and len(queued) == 3
    assert {k: old.reveal(t) for k, t in templates.items()} == {  # the active model's templates
        f"p{p}": Recognizer.from_config(Config()).enroll([draw_hand(p, 0), draw_hand(p, 1)]).template for p in (1, 2, 3)}
    before = guarded_recognizer(old, True).score_matrix(hands.probes, Gallery.from_templates(templates))

    from vendor_node.money.accounts import AccountStore

    with AccountStore.open(unit.cfg) as store:
        store.mark_uploaded(["p1", "p2", "p3"])  # the office has them, in the old form
    new_key = unit.tmp / "guard2.key"
    assert main(["keys", "new-guard-key", "--out", str(new_key)]) == 0
    assert os.stat(new_key).st_mode & 0o777 == 0o600
    assert main(["keys", "renew-template-guard", "--new-key", str(new_key), "--state-dir", str(unit.state)]) == 0
    assert "renewed 3 template(s)" in capsys.readouterr().out
    new = unit_template_guard(KeyStore.from_config(unit.cfg))
    assert new.guard_id == TemplateGuard(new_key.read_bytes()).guard_id != old.guard_id
    renewed, renewed_queue = stored_templates(unit)
    assert all(guard_id_of_template(t) == new.guard_id for t in renewed.values())
    after = guarded_recognizer(new, True).score_matrix(hands.probes, Gallery.from_templates(renewed))
    np.testing.assert_array_equal(before, after)
    # the renewed forms are queued again (sealed for transport) so the office relays them to the other units
    from vendor_node.money.keys import TemplateCipher
    from vendor_node.money.bundle import TEMPLATE_TRANSPORT_PURPOSE

    transport = TemplateCipher(KeyStore.from_config(unit.cfg).load_fleet_template_key(), TEMPLATE_TRANSPORT_PURPOSE)

    with AccountStore.open(unit.cfg) as store:
        pending = store.pending_uploads()
        assert sorted(row[0] for row in pending) == ["p1", "p2", "p3"]
        for employee_id, sealed, consent, _ in pending:
            assert transport.open(employee_id, sealed) == renewed[employee_id] and consent == "c1"
    # again with the same key: nothing to do; an interrupted renewal (key file not yet replaced) runs again
    assert main(["keys", "renew-template-guard", "--new-key", str(new_key), "--state-dir", str(unit.state)]) == 0
    assert "already under this guard key" in capsys.readouterr().out


def test_a_store_from_before_guarding_is_adopted_without_images(hands, unit):
    """Templates stored clear by the previous firmware are moved into the guarded domain in place."""
    from vendor_node.money.accounts import AccountStore
    from vendor_node.unit.keysource import adopt_clear_templates, unit_keystore, unit_template_guard

    with AccountStore.open(unit.cfg) as store:
        for k in ("p1", "p2"):
            store.enroll(k, hands.clear[k], "c0")  # the old firmware's form
        guard = unit_template_guard(unit_keystore(unit.cfg))
        assert adopt_clear_templates(store, guard) == 2
        stored = store.templates()
        assert adopt_clear_templates(store, guard) == 0  # nothing clear is left; nothing rewritten
    assert all(is_guarded(t) for t in stored.values())
    assert {k: guard.reveal(t) for k, t in stored.items()} == {k: hands.clear[k] for k in ("p1", "p2")}


def test_palm_code_bits_are_what_the_guard_permutes():
    """The guard relies on Johnson planes being compared bit for bit; this pins that contract."""
    code = np.random.default_rng(3).integers(0, 6, (32, 32)).astype(np.uint8)
    assert np.array_equal(palmcode.planes_to_code(palmcode.johnson_planes(code)), code)


def test_the_units_gallery_guards_old_clear_templates_and_leaves_a_foreign_one_out(hands):
    """During a fleet's upgrade a bundle may still carry clear templates: matched in the guarded domain all
    the same; a template under another fleet's guard is refused by name (the unit leaves only it out)."""
    from vendor_node.unit.keysource import guarded_gallery

    guard, foreign = TemplateGuard(os.urandom(32)), TemplateGuard(os.urandom(32))
    build = guarded_gallery(guard)
    gallery = build({"p1": hands.clear["p1"], "p2": guard.protect(hands.clear["p2"])})
    assert gallery.guard_id == guard.guard_id
    recognizer = guarded_recognizer(guard)
    assert recognizer.identify(hands.probes[0], gallery).employee_id == "p1"
    with pytest.raises(RecognitionError, match="template of p3 was made under another template guard"):
        build({"p3": foreign.protect(hands.clear["p3"])})


def test_renewal_requeues_only_what_was_enrolled_here(hands, unit, capsys):
    """A copy that came in a bundle may be older than the office's: only this unit's own enrollments go back up."""
    from vendor_node.money.accounts import AccountStore

    enroll_drawn(unit, 1)
    second = unit.tmp / "second"
    fleet = unit.tmp / "fleet"
    assert main(["provision", "--fleet-public-key", str(fleet / "fleet_public_key.pem"), "--unit-id", "U2",
                 "--fleet-template-key", str(fleet / "fleet_template.key"), "--state-dir", str(second)]) == 0
    bundle = unit.tmp / "u2.vnb"
    assert main(["fleet", "bundle", "--employees", str(unit.tmp / "staff.csv"), "--signing-key",
                 str(fleet / "fleet_signing.key"), "--out", str(bundle), "--unit-id", "U2", "--version", "2"]) == 0
    assert main(["accounts", "import", str(bundle), "--state-dir", str(second)]) == 0
    uploads = unit.tmp / "uploads.json"
    assert main(["accounts", "export-uploads", "--out", str(uploads), "--mark-uploaded",
                 "--state-dir", str(unit.state)]) == 0
    relayed = unit.tmp / "u2b.vnb"
    assert main(["fleet", "bundle", "--employees", str(unit.tmp / "staff.csv"), "--signing-key",
                 str(fleet / "fleet_signing.key"), "--out", str(relayed), "--unit-id", "U2", "--version", "3",
                 "--templates", str(uploads)]) == 0
    assert main(["accounts", "import", str(relayed), "--state-dir", str(second)]) == 0
    folder = unit.tmp / "hand5"
    folder.mkdir()
    for s in (0, 1):
        cv2.imwrite(str(folder / f"{s}.png"), draw_hand(5, s))
    assert main(["enroll", "p5", "--consent", "c1", "--images", str(folder), "--state-dir", str(second)]) == 0
    cfg2 = Config().replace(unit={"state_dir": second})
    with AccountStore.open(cfg2) as store:
        store.mark_uploaded(["p5"])
        assert set(store.templates()) == {"p1", "p5"}  # p1 from the bundle, p5 enrolled here
    new_key = unit.tmp / "guard3.key"
    assert main(["keys", "new-guard-key", "--out", str(new_key)]) == 0
    assert main(["keys", "renew-template-guard", "--new-key", str(new_key), "--state-dir", str(second)]) == 0
    assert "renewed 2 template(s)" in capsys.readouterr().out
    with AccountStore.open(cfg2) as store:
        assert [row[0] for row in store.pending_uploads()] == ["p5"]
        renewed = store.templates()
    new = TemplateGuard(new_key.read_bytes())
    active = Recognizer.from_config(Config())  # what the CLI enrolled with
    assert new.reveal(renewed["p1"]) == active.enroll([draw_hand(1, 0), draw_hand(1, 1)]).template


def test_cli_renewal_moves_embedding_templates_and_palm_codes_alike(unit, capsys):
    """`keys renew-template-guard` on a unit mid-way through a model change: both kinds renewed, nothing lost."""
    from vendor_node.hand.model import embedding_template
    from vendor_node.hand.templates import EmbeddingTemplate, model_tag
    from vendor_node.money.accounts import AccountStore
    from vendor_node.money.keys import KeyStore
    from vendor_node.unit.keysource import unit_template_guard

    enroll_drawn(unit, 1)  # a palm code (the active model of this firmware)
    old = unit_template_guard(KeyStore.from_config(unit.cfg))
    vector = embedding_template(np.random.default_rng(3).normal(size=128))
    clear_embedding = EmbeddingTemplate(vector, model_tag("palm-embed-1"), 2).to_bytes()
    with AccountStore.open(unit.cfg) as store:
        store.enroll("p2", old.protect(clear_embedding), "c1")
    clear_code = old.reveal(stored_templates(unit)[0]["p1"])
    new_key = unit.tmp / "guard2.key"
    assert main(["keys", "new-guard-key", "--out", str(new_key)]) == 0
    assert main(["keys", "renew-template-guard", "--new-key", str(new_key), "--state-dir", str(unit.state)]) == 0
    assert "renewed 2 template(s)" in capsys.readouterr().out
    new = TemplateGuard(new_key.read_bytes())
    renewed, _ = stored_templates(unit)
    assert {guard_id_of_template(t) for t in renewed.values()} == {new.guard_id}
    assert new.reveal(renewed["p1"]) == clear_code and new.reveal(renewed["p2"]) == clear_embedding
    assert renewed["p2"] != old.protect(clear_embedding) and len(renewed["p2"]) == 152
