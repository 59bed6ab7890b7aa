"""The two-stage 1:N search: the embedding shortlists, the palm codes decide (hand/cascade.py, models.json)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vendor_node.assets import MAX_SHORTLIST_KEEP, model_set
from vendor_node.config import ASSETS_DIR, Config
from vendor_node.errors import ModelError, RecognitionError
from vendor_node.hand.gallery import Gallery, parse_template
from vendor_node.hand.model import Embedder
from vendor_node.hand.recognition import Recognizer, shortlist_coverage, templates_by_model
from vendor_node.hand.templates import EmbeddingTemplate, Template, TemplateSet
from vendor_node.sim.drawn_hands import draw_hand

PEOPLE = [f"E{p}" for p in range(1, 9)]


def seed(employee_id: str) -> int:
    return int(employee_id[1:])


@pytest.fixture(scope="module")
def models():
    return Embedder.load(ASSETS_DIR / "palm-gabor-1"), Embedder.load(ASSETS_DIR / "palm-embed-1")


@pytest.fixture(scope="module")
def enrolled(models):
    cascade = Recognizer(models[0], shortlist=models[1], shortlist_keep=3)
    return {e: cascade.enroll([draw_hand(seed(e), 0), draw_hand(seed(e), 1)]).template for e in PEOPLE}


@pytest.fixture
def assets(tmp_path):
    for name in ("palm-gabor-1", "palm-embed-1"):
        shutil.copytree(ASSETS_DIR / name, tmp_path / name)
    return tmp_path


def write_models(folder, listing) -> None:
    (folder / "models.json").write_text(json.dumps(listing))


def test_models_json_names_the_shortlist_and_its_keep(assets):
    write_models(assets, {"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-1", "keep": 48}})
    listed = model_set(assets)
    assert (listed.active.name, listed.shortlist.name, listed.shortlist_keep) == ("palm-gabor-1", "palm-embed-1", 48)
    assert listed.all == (listed.active, listed.shortlist)
    recognizer = Recognizer.from_config(Config().replace(unit={"assets_dir": assets}))
    assert recognizer.shortlist.keep == 48 and recognizer.shortlist.model_id == "palm-embed-1"
    assert [m.model_id for m in recognizer.deciders] == ["palm-gabor-1"]  # the shortlist never decides


@pytest.mark.parametrize("shortlist, message", [
    ({"model": "palm-embed-1", "keep": 0}, "shortlist.keep: expected a whole number"),
    ({"model": "palm-embed-1", "keep": MAX_SHORTLIST_KEEP + 1}, "shortlist.keep"),
    ({"model": "palm-embed-1", "keep": "64"}, "shortlist.keep"),
    ({"model": "palm-embed-1", "keep": True}, "shortlist.keep"),
    ({"model": "palm-embed-1"}, "shortlist: expected"),
    ({"model": "palm-embed-1", "keep": 8, "floor": 0.5}, "unknown key(s) ['floor']"),
    ({"model": "palm-gabor-1", "keep": 8}, "listed twice"),
    ({"model": "palm-nope", "keep": 8}, "shortlist.model: no manifest.json"),
    ("palm-embed-1", "shortlist: expected"),
])
def test_a_bad_shortlist_is_refused_by_name(assets, shortlist, message):
    write_models(assets, {"active": "palm-gabor-1", "shortlist": shortlist})
    with pytest.raises(ModelError, match="models.json") as info:
        model_set(assets)
    assert message in str(info.value)


def test_the_shortlist_is_an_embedding_for_a_palm_code_model(assets):
    write_models(assets, {"active": "palm-embed-1", "shortlist": {"model": "palm-gabor-1", "keep": 8}})
    with pytest.raises(ModelError, match="an embedding model .palm-gabor-1 is palm_code. shortlists"):
        model_set(assets)


def test_enrollment_makes_both_templates_palm_code_first(enrolled):
    template = parse_template(enrolled["E1"])
    assert isinstance(template, TemplateSet) and len(template.members) == 2
    assert isinstance(parse_template(template.members[0]), Template)
    assert isinstance(parse_template(template.members[1]), EmbeddingTemplate)
    gallery = Gallery.from_templates(enrolled)
    assert len(gallery) == len(PEOPLE)  # two banks, one employee each
    assert templates_by_model(enrolled.values(), ASSETS_DIR) == {"palm-gabor-1": len(PEOPLE)}


def test_the_cascade_decides_as_the_full_palm_code_search_when_the_genuine_is_shortlisted(models, enrolled):
    cascade = Recognizer(models[0], shortlist=models[1], shortlist_keep=3)
    plain = Recognizer(models[0])
    gallery = Gallery.from_templates(enrolled)
    compared = 0
    for employee_id in PEOPLE + ["E61", "E77"]:  # the last two are strangers
        probe = cascade.features(draw_hand(seed(employee_id), 3))
        rows = cascade.shortlist.rows(cascade._features_for(probe, cascade.shortlist.matcher), gallery, None)
        assert len(rows) == 3
        full = plain.identify(probe, gallery)
        if employee_id in PEOPLE and gallery.codes.row(employee_id) not in rows:
            continue  # the embedding missed them: refused at worst, never paid for by someone else
        decided = cascade.identify(probe, gallery)
        assert (decided.employee_id, decided.reason, decided.score) == (full.employee_id, full.reason, full.score)
        assert decided.runner_up <= full.runner_up + 1e-6  # the runner-up among the shortlisted only
        compared += 1
    assert compared >= 7 and full.employee_id is None


def test_an_employee_with_only_a_palm_code_still_pays_and_gets_the_embedding(models, enrolled):
    cascade = Recognizer(models[0], shortlist=models[1], shortlist_keep=1)
    old = TemplateSet.from_bytes(enrolled["E5"]).members[0]  # enrolled before the cascade: a palm code alone
    gallery = Gallery.from_templates({**enrolled, "E5": old})
    assert cascade.shortlist.coverage(gallery) == (len(PEOPLE) - 1, len(PEOPLE))
    probe = cascade.features(draw_hand(5, 3))
    match = cascade.identify(probe, gallery)
    assert match.employee_id == "E5" and match.reason == "match"
    fresh = cascade.refreshed_template(probe, match, gallery)
    assert isinstance(parse_template(fresh), EmbeddingTemplate)
    stored = cascade.with_old_template(fresh, old)
    assert TemplateSet.from_bytes(stored).members[0] == old  # the deciding palm code stays first
    gallery.add("E5", stored)
    assert cascade.shortlist.coverage(gallery) == (len(PEOPLE), len(PEOPLE)) and len(gallery) == len(PEOPLE)
    assert cascade.identify(cascade.features(draw_hand(5, 4)), gallery).employee_id == "E5"
    assert cascade.refreshed_template(probe, cascade.identify(probe, gallery), gallery) is None  # has both now


def test_selftest_counts_the_shortlist_templates(assets, enrolled):
    write_models(assets, {"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-1", "keep": 8}})
    stored = list(enrolled.values()) + [TemplateSet.from_bytes(enrolled["E1"]).members[0]]
    assert templates_by_model(stored, assets) == {"palm-gabor-1": len(PEOPLE) + 1}
    assert shortlist_coverage(stored, assets) == ("palm-embed-1", len(PEOPLE))
    write_models(assets, {"active": "palm-gabor-1"})
    assert shortlist_coverage(stored, assets) is None


def test_nobody_with_a_palm_code_shortlisted_is_unknown_not_an_error(models, enrolled):
    cascade = Recognizer(models[0], shortlist=models[1], shortlist_keep=2)
    only_embeddings = {e: TemplateSet.from_bytes(t).members[1] for e, t in enrolled.items()}
    gallery = Gallery.from_templates(only_embeddings)
    match = cascade.identify(cascade.features(draw_hand(1, 3)), gallery)
    assert (match.employee_id, match.reason) == (None, "unknown")


def test_a_shortlist_needs_a_palm_code_active_model(models):
    with pytest.raises(RecognitionError, match="a shortlist needs an embedding model"):
        Recognizer(models[1], shortlist=models[0])
    assert np.isfinite(Recognizer(models[0], shortlist=models[1]).threshold)


def test_a_unit_with_a_cascade_serves_palm_code_employees_and_adds_their_embeddings(tmp_path, models):
    """Employees enrolled before the cascade (palm codes alone) pay at a cascade unit; a confident match stores
    their embedding beside the palm code (guarded, the palm code first); a stranger never pays."""
    from vendor_node.money.accounts import AccountStore
    from vendor_node.sim.provision import provision_bundle
    from vendor_node.sim.simulate import Customer, SimUnit
    from vendor_node.unit.keysource import guarded_gallery, unit_keystore, unit_template_guard

    cfg = Config().replace(
        unit={"state_dir": tmp_path / "state", "hardware": "sim", "unit_id": "unit-test"},
        board={"selection_timeout_s": 1.0, "vend_outcome_timeout_s": 1.0, "hand_wait_s": 0.5,
               "reply_timeout_s": 0.5, "reconnect_max_backoff_s": 0.5},
        abuse={"max_failures": 50})
    people = {e: seed(e) for e in PEOPLE[:5]}
    before = Recognizer(models[0])
    enrolled = {e: before.enroll([draw_hand(p, 0), draw_hand(p, 1)]).template for e, p in people.items()}
    provision_bundle(cfg, [(e, f"Person {e}", 100_000, "active") for e in people], enrolled)
    recognizer = Recognizer(models[0], shortlist=models[1], shortlist_keep=2)
    recognizer.guard = unit_template_guard(unit_keystore(cfg))
    fast = {"patience_s": 1.0, "reader_timeout_s": 2.0, "session_timeout_s": 5.0, "slow_s": 0.2,
            "cancel_after_s": 0.2}
    paid = []
    with SimUnit(cfg, recognizer, vmc_options=fast, gallery_factory=guarded_gallery(recognizer.guard)) as unit:
        assert unit.wait_in_service(10.0), unit.loop.faults
        for visit in range(2):
            for e, p in people.items():
                purchase = Customer(unit, [draw_hand(p, 2 + visit)], (150, "A2"), "normal", "hand_first").run(20.0)
                paid.append((e, purchase.employee_id, purchase.outcome))
            stranger = Customer(unit, [draw_hand(61, visit)], (150, "A2"), "normal", "hand_first").run(20.0)
            assert stranger.employee_id is None and stranger.outcome in ("unknown", "rejected"), stranger
        listed, total = recognizer.shortlist.coverage(unit.loop._gallery)
    assert unit.error is None
    assert all(who == e and outcome == "vended" for e, who, outcome in paid), paid
    assert 0 < listed <= total == len(people)
    with AccountStore.open(cfg, keystore=unit_keystore(cfg)) as store:
        stored = store.templates()
    moved = {e: parse_template(t) for e, t in stored.items() if isinstance(parse_template(t), TemplateSet)}
    assert len(moved) == listed
    for e, kept in moved.items():
        assert recognizer.guard.reveal(kept.members[0]) == enrolled[e]  # the deciding palm code, unchanged
        assert parse_template(kept.members[1]).model_tag == recognizer.shortlist.matcher.model_tag
    assert templates_by_model(stored.values(), ASSETS_DIR) == {"palm-gabor-1": len(people)}


@pytest.mark.parametrize("full_search", [True, False])
def test_a_genuine_the_embedding_misses_pays_by_the_full_search_or_is_refused(models, enrolled, full_search):
    cascade = Recognizer(models[0], shortlist=models[1], shortlist_keep=1, full_search_when_unknown=full_search)
    code = TemplateSet.from_bytes(enrolled["E5"]).members[0]
    lost = EmbeddingTemplate(np.where(np.arange(128) % 2, 90, -90).astype(np.int8),
                             cascade.shortlist.matcher.model_tag).to_bytes()  # an embedding far from E5's palm
    gallery = Gallery.from_templates({**enrolled, "E5": TemplateSet((code, lost), 0).to_bytes()})
    probe = cascade.features(draw_hand(5, 3))
    assert gallery.codes.row("E5") not in cascade.shortlist.rows(
        cascade._features_for(probe, cascade.shortlist.matcher), gallery, None)
    match = cascade.identify(probe, gallery)
    assert (match.employee_id, match.reason) == (("E5", "match") if full_search else (None, "unknown"))


def test_full_search_when_unknown_is_a_checked_boolean(assets):
    write_models(assets, {"active": "palm-gabor-1",
                          "shortlist": {"model": "palm-embed-1", "keep": 8, "full_search_when_unknown": False}})
    assert model_set(assets).full_search_when_unknown is False
    assert Recognizer.from_config(Config().replace(unit={"assets_dir": assets})).shortlist.full_search_when_unknown \
        is False
    write_models(assets, {"active": "palm-gabor-1",
                          "shortlist": {"model": "palm-embed-1", "keep": 8, "full_search_when_unknown": "yes"}})
    with pytest.raises(ModelError, match="shortlist.full_search_when_unknown: expected true or false"):
        model_set(assets)
