"""Score-level fusion of the palm codes and the embedding (hand/fusion.py; models.json shortlist.decide)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vendor_node.assets import model_set
from vendor_node.config import ASSETS_DIR, Config
from vendor_node.errors import ConfigError, ModelError, RecognitionError
from vendor_node.hand.evaluation_metrics import fnmr_at_fmr
from vendor_node.hand.fusion import FusedDecision, FusionRule, fit_weight
from vendor_node.hand.gallery import Gallery, parse_template
from vendor_node.hand.model import Embedder
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.templates import EmbeddingTemplate, TemplateSet
from vendor_node.sim.drawn_hands import draw_hand

PEOPLE = [f"E{p}" for p in range(1, 9)]
STRANGERS = [61, 77, 83, 95, 104]
EMBED = ASSETS_DIR / "palm-embed-1"


def write_drawn_hands(folder, people, samples: int) -> None:
    """An eval folder of drawn hands: <folder>/p<person>/<sample>.png."""
    import cv2

    for person in people:
        for sample in range(samples):
            path = folder / f"p{person}" / f"{sample}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), draw_hand(person, sample, (240, 320)))


def shipped_fusion() -> dict:
    return json.loads((EMBED / "manifest.json").read_text())["fusion"]


@pytest.fixture(scope="module")
def models():
    return Embedder.load(ASSETS_DIR / "palm-gabor-1"), Embedder.load(EMBED)


@pytest.fixture(scope="module")
def fused(models):
    return Recognizer(models[0], shortlist=models[1], shortlist_keep=3, fused=True)


@pytest.fixture(scope="module")
def enrolled(fused):
    return {e: fused.enroll([draw_hand(int(e[1:]), 0), draw_hand(int(e[1:]), 1)]).template for e in PEOPLE}


@pytest.fixture
def assets(tmp_path):
    for name in ("palm-gabor-1", "palm-embed-1"):
        shutil.copytree(ASSETS_DIR / name, tmp_path / name)
    return tmp_path


def test_the_rule_is_a_weighted_sum_of_z_scores_and_round_trips():
    rule = FusionRule(0.6, 0.02, 0.1, 0.2, 0.75)
    assert rule.fuse(0.64, 0.5) == pytest.approx(0.75 * 2.0 + 0.25 * 2.0)
    assert rule.fuse(0.6, 0.1) == pytest.approx(0.0)  # both at their impostor means
    assert FusionRule.from_dict(rule.to_dict()) == rule


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("weight_palm_code"), "missing or not a number"),
    (lambda b: b["embedding"].update(impostor_sd=0), "impostor_sd must be > 0"),
    (lambda b: b.update(weight_palm_code=1.5), "within 0..1"),
    (lambda b: b["palm_code"].update(impostor_mean="x"), "missing or not a number"),
])
def test_a_bad_rule_is_refused_naming_the_block(change, message):
    block = FusionRule(0.6, 0.02, 0.1, 0.2, 0.75).to_dict()
    change(block)
    with pytest.raises(ConfigError, match=message) as info:
        FusionRule.from_dict(block, "palm-embed-1: fusion")
    assert "palm-embed-1: fusion" in str(info.value)


def test_the_fitted_weight_favours_the_stronger_score_and_beats_each_alone():
    """Independent Gaussian scores, the palm code three times as separating: the best linear weight on z-scores
    is about 3/4, and the fused FNMR at a low FMR is below either score's."""
    rng = np.random.default_rng(1)
    n_gen, n_imp = 4000, 200_000
    palm = (rng.normal(0.6 + 0.02 * 4.5, 0.02, n_gen), rng.normal(0.6, 0.02, n_imp))
    emb = (rng.normal(0.1 + 0.2 * 1.5, 0.2, n_gen), rng.normal(0.1, 0.2, n_imp))
    rule = FusionRule.from_impostors(palm[1], emb[1])
    fitted, search = fit_weight(rule, (palm[0], emb[0]), (palm[1], emb[1]), 1e-4)
    assert 0.6 <= fitted.weight <= 0.9 and len(search) == 41
    fused_fnmr = fnmr_at_fmr(fitted.fuse(*[s[0] for s in (palm, emb)]), fitted.fuse(palm[1], emb[1]), 1e-4)[0]
    assert fused_fnmr < fnmr_at_fmr(palm[0], palm[1], 1e-4)[0] < fnmr_at_fmr(emb[0], emb[1], 1e-4)[0]


def test_models_json_decide_fused_is_checked(assets):
    (assets / "models.json").write_text(json.dumps(
        {"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-1", "keep": 16, "decide": "fused"}}))
    assert model_set(assets).fused
    recognizer = Recognizer.from_config(Config().replace(unit={"assets_dir": assets}))
    assert recognizer.fusion is not None and recognizer.fusion.model_id == "palm-gabor-1+palm-embed-1"
    (assets / "models.json").write_text(json.dumps(
        {"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-1", "keep": 16, "decide": "sum"}}))
    with pytest.raises(ModelError, match="shortlist.decide: expected \"palm_code\" or \"fused\", got 'sum'"):
        model_set(assets)
    (assets / "models.json").write_text(json.dumps({"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-1",
                                                                                           "keep": 16}}))
    assert not model_set(assets).fused
    assert Recognizer.from_config(Config().replace(unit={"assets_dir": assets})).fusion is None


def test_a_fusion_block_is_for_one_palm_code_model(models):
    manifest = dict(models[1].manifest)
    with pytest.raises(ModelError, match="fusion.palm_code_model is 'palm-gabor-1', the active model is 'palm-x'"):
        FusedDecision.from_manifest(manifest, "palm-x")
    manifest.pop("fusion")
    with pytest.raises(ModelError, match="no fusion block"):
        FusedDecision.from_manifest(manifest, "palm-gabor-1")
    with pytest.raises(RecognitionError, match="a fused decision needs a shortlist"):
        Recognizer(models[0], fused=True)


@pytest.mark.parametrize("name", ["palm-embed-1", "palm-embed-2"])
def test_the_shipped_fusion_names_its_split_and_held_out_figures(name):
    if not (ASSETS_DIR / name / "manifest.json").is_file():
        pytest.skip(f"{name} is not shipped")
    block = json.loads((ASSETS_DIR / name / "manifest.json").read_text())["fusion"]
    assert "calibrate" in block["fitted_on"] and block["palm_code_model"] == "palm-gabor-1"
    decision = block["decision"]
    assert decision["min_threshold"] <= decision["threshold"] and decision["margin"] >= decision["min_margin"] > 0
    held = block["held_out"]["tongji_dev_test"]
    assert {"palm", "emb", "fused"} <= set(held)
    assert held["fused"]["protocol"]["impostor"] == 801_000 and held["fused"]["protocol"]["genuine"] == 900


def test_drawn_employees_pay_and_drawn_strangers_do_not(fused, enrolled):
    gallery = Gallery.from_templates(enrolled)
    for employee_id in PEOPLE:
        match = fused.identify(fused.features(draw_hand(int(employee_id[1:]), 3)), gallery)
        assert (match.employee_id, match.reason, match.model_id) == (employee_id, "match", fused.fusion.model_id)
        assert match.score >= fused.fusion.policy.threshold_for(len(gallery))
    for stranger in STRANGERS:
        match = fused.identify(fused.features(draw_hand(stranger, 0)), gallery)
        assert match.employee_id is None and match.reason in ("unknown", "ambiguous"), (stranger, match)


def test_an_employee_without_an_embedding_still_pays_on_the_palm_code_and_gets_one(fused, enrolled):
    old = TemplateSet.from_bytes(enrolled["E5"]).members[0]  # enrolled before the cascade: a palm code alone
    gallery = Gallery.from_templates({**enrolled, "E5": old})
    probe = fused.features(draw_hand(5, 3))
    match = fused.identify(probe, gallery)
    assert (match.employee_id, match.reason) == ("E5", "match")
    again = fused.features(draw_hand(5, 0))  # an enrollment frame again: far over threshold + 2 margins
    confident = fused.identify(again, gallery)
    assert confident.score >= fused.fusion.policy.threshold_for(len(gallery)) + 2 * fused.fusion.policy.margin
    fresh = fused.refreshed_template(again, confident, gallery)
    assert isinstance(parse_template(fresh), EmbeddingTemplate)  # the missing embedding, from this frame
    stranger = fused.identify(fused.features(draw_hand(61, 1)), gallery)
    assert stranger.employee_id is None


def test_eval_model_fused_measures_the_fused_score_on_drawn_hands(tmp_path, capsys):
    from vendor_node.cli import main

    write_drawn_hands(tmp_path / "hands", range(1, 5), 3)
    report_path = tmp_path / "report.json"
    assert main(["eval", "--model", "fused", "--dataset", str(tmp_path / "hands"), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    block = shipped_fusion()
    assert report["verification"]["genuine"] == 8 and report["verification"]["impostor"] == 24
    assert report["identification"]["rank1"] == 1.0
    assert report["identification"]["threshold"] == pytest.approx(
        FusedDecision.from_manifest({"model_id": "palm-embed-1", "fusion": block}, "palm-gabor-1").policy.threshold_for(4))
    assert "EER" in capsys.readouterr().out


def test_eval_model_fused_without_a_fusion_block_names_the_cause(assets, tmp_path, capsys):
    from vendor_node.cli import main

    manifest = json.loads((assets / "palm-embed-1" / "manifest.json").read_text())
    manifest.pop("fusion")
    (assets / "palm-embed-1" / "manifest.json").write_text(json.dumps(manifest))
    (assets / "models.json").write_text(json.dumps({"active": "palm-gabor-1"}))
    config = tmp_path / "unit.toml"
    config.write_text(f'[unit]\nassets_dir = "{assets}"\n')
    import cv2

    for person in (1, 2):
        (tmp_path / "hands" / f"p{person}").mkdir(parents=True)
        for sample in (0, 1):
            cv2.imwrite(str(tmp_path / "hands" / f"p{person}" / f"{sample}.png"), draw_hand(person, sample, (240, 320)))
    assert main(["--config", str(config), "eval", "--model", "fused", "--dataset", str(tmp_path / "hands"),
                 "--report", str(tmp_path / "r.json")]) == 1
    assert "no model folder holds a fusion block for the active model palm-gabor-1" in capsys.readouterr().err


def test_a_palm_code_alone_is_carried_to_the_fused_scale_at_equal_false_match_rate(models):
    decision = FusedDecision.from_manifest(models[1].manifest, "palm-gabor-1")
    palm_points, fused_points = shipped_fusion()["palm_code_fmr_points"], shipped_fusion()["decision"]["fmr_points"]
    carried = decision.palm_on_fused_scale([t for _, t in palm_points])
    assert carried == pytest.approx([t for _, t in fused_points], abs=1e-6)
    beyond = decision.palm_on_fused_scale([palm_points[-1][1] + 0.05, palm_points[0][1] - 0.05])
    assert beyond[0] > fused_points[-1][1] and beyond[1] < fused_points[0][1]  # extended, never clamped


def test_a_unit_deciding_on_the_fused_score_charges_employees_and_never_a_stranger(tmp_path, models):
    """A simulated unit (drawn hands, guarded templates, the fused decision): enrolled employees pay for their
    own purchases, strangers are turned away, and every charge is the right person's."""
    from vendor_node.sim.provision import provision_bundle
    from vendor_node.sim.simulate import Customer, SimUnit
    from vendor_node.unit.keysource import guarded_gallery, unit_keystore, unit_template_guard

    cfg = Config().replace(
        unit={"state_dir": tmp_path / "state", "hardware": "sim", "unit_id": "unit-test"},
        board={"selection_timeout_s": 1.0, "vend_outcome_timeout_s": 1.0, "hand_wait_s": 0.5,
               "reply_timeout_s": 0.5, "reconnect_max_backoff_s": 0.5},
        abuse={"max_failures": 50})
    people = {e: int(e[1:]) for e in PEOPLE[:4]}
    recognizer = Recognizer(models[0], shortlist=models[1], shortlist_keep=2, fused=True)
    enrolled = {e: recognizer.enroll([draw_hand(p, 0), draw_hand(p, 1)]).template for e, p in people.items()}
    provision_bundle(cfg, [(e, f"Person {e}", 100_000, "active") for e in people], enrolled)
    recognizer.guard = unit_template_guard(unit_keystore(cfg))
    fast = {"patience_s": 1.0, "reader_timeout_s": 2.0, "session_timeout_s": 5.0, "slow_s": 0.2,
            "cancel_after_s": 0.2}
    paid, strangers = [], []
    with SimUnit(cfg, recognizer, vmc_options=fast, gallery_factory=guarded_gallery(recognizer.guard)) as unit:
        assert unit.wait_in_service(10.0), unit.loop.faults
        for e, p in people.items():
            purchase = Customer(unit, [draw_hand(p, 3)], (150, "A2"), "normal", "hand_first").run(20.0)
            paid.append((e, purchase.employee_id, purchase.outcome))
        for stranger in STRANGERS[:3]:
            purchase = Customer(unit, [draw_hand(stranger, 2)], (150, "A2"), "normal", "hand_first").run(20.0)
            strangers.append((purchase.employee_id, purchase.outcome))
    assert unit.error is None
    assert all(who == e and outcome == "vended" for e, who, outcome in paid), paid
    assert all(who is None and outcome in ("unknown", "rejected") for who, outcome in strangers), strangers


def test_eval_model_fused_leaves_out_the_people_either_model_saw(tmp_path):
    """coep_dev: palm-gabor-1 was trained on 001, palm-embed-1 calibrated on 004; 900 and 901 neither."""
    import cv2

    from vendor_node.cli import main

    for person, subject in enumerate(("001", "004", "900", "901"), start=1):
        for sample in range(2):
            path = tmp_path / "coep_dev" / subject / f"{sample}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), draw_hand(person, sample, (240, 320)))
    report_path = tmp_path / "report.json"
    assert main(["eval", "--model", "fused", "--exclude-trained", "--dataset", str(tmp_path / "coep_dev"),
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert {"001", "004"} <= set(report["excluded_trained_subjects"])
    assert not {"900", "901"} & set(report["excluded_trained_subjects"])
    assert report["verification"]["genuine"] == 2


def test_eval_model_fused_measures_the_models_json_shortlist_model(tmp_path, capsys):
    """A unit set to decide on palm-embed-2's fusion is measured with that fusion, not the first folder's."""
    from vendor_node.cli import main

    if not (ASSETS_DIR / "palm-embed-2" / "manifest.json").is_file():
        pytest.skip("palm-embed-2 is not shipped")
    assets = tmp_path / "assets"
    for name in ("palm-gabor-1", "palm-embed-1", "palm-embed-2"):
        shutil.copytree(ASSETS_DIR / name, assets / name)
    (assets / "models.json").write_text(json.dumps(
        {"active": "palm-gabor-1", "shortlist": {"model": "palm-embed-2", "keep": 16, "decide": "fused"}}))
    config = tmp_path / "unit.toml"
    config.write_text(f'[unit]\nassets_dir = "{assets}"\n')
    write_drawn_hands(tmp_path / "hands", range(1, 4), 2)
    report_path = tmp_path / "report.json"
    assert main(["--config", str(config), "eval", "--model", "fused", "--dataset", str(tmp_path / "hands"),
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    second = json.loads((assets / "palm-embed-2" / "manifest.json").read_text())
    expected = FusedDecision.from_manifest(second, "palm-gabor-1").policy.threshold_for(3)
    first = FusedDecision.from_manifest(json.loads((assets / "palm-embed-1" / "manifest.json").read_text()),
                                        "palm-gabor-1").policy.threshold_for(3)
    assert expected != first
    assert report["identification"]["threshold"] == pytest.approx(expected)
