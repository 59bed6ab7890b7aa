"""The drawn employees' template cache: made once through the real enrollment, reused by prefix, never trusted when
made by other code, kept outside the state folder; and a simulated office provisioned from it."""
import random
from pathlib import Path

import numpy as np
import pytest

from vendor_node.config import Config
from vendor_node.hand.recognition import Recognizer
from vendor_node.sim import provision, template_cache
from vendor_node.sim.template_cache import TemplateCache, cache_path, drawn_templates, enroll_drawn_person


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer.from_config(Config())


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Enrollments counted; the cache in a temporary folder."""
    monkeypatch.setenv("VENDOR_NODE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = template_cache.enroll_drawn_person

    def counting(recognizer, seed):
        calls.append(seed)
        return real(recognizer, seed)

    monkeypatch.setattr(template_cache, "enroll_drawn_person", counting)
    return calls


def test_made_once_then_read_and_extended_by_prefix(recognizer, counted, tmp_path):
    cfg = Config()
    first = drawn_templates(cfg, recognizer, 3, workers=1, progress=False)
    assert len(first) == 3 and len(counted) >= 3
    assert cache_path(recognizer).parent == tmp_path / "cache"
    seed, template = first[0]
    assert template == enroll_drawn_person(recognizer, seed)  # the real enrollment's bytes
    counted.clear()
    again = drawn_templates(cfg, recognizer, 3, workers=1, progress=False)
    assert again == first and counted == [first[0][0]]  # only the check that the cache is this code's
    counted.clear()
    more = drawn_templates(cfg, recognizer, 5, workers=1, progress=False)
    assert more[:3] == first and len(more) == 5  # a bigger office reuses the smaller one's people
    assert all(s > first[-1][0] for s in counted[1:])


def test_a_cache_made_by_other_code_is_made_again(recognizer, counted):
    cfg = Config()
    first = drawn_templates(cfg, recognizer, 2, workers=1, progress=False)
    path = cache_path(recognizer)
    cache = TemplateCache.load(path)
    cache.blob = cache.blob.copy()
    cache.blob[10] ^= 0xFF  # as if another template format had made it
    cache.save()
    counted.clear()
    assert drawn_templates(cfg, recognizer, 2, workers=1, progress=False) == first
    assert len(counted) >= 3  # the check, then both people enrolled again


def test_an_unreadable_cache_file_is_made_again(recognizer, counted):
    path = cache_path(recognizer)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    assert len(drawn_templates(Config(), recognizer, 1, workers=1, progress=False)) == 1
    assert np.load(path)["seeds"].size >= 1


def test_simulated_office_from_the_cache_enrolls_nothing_twice(recognizer, counted, monkeypatch, tmp_path):
    monkeypatch.setattr(provision, "CACHE_FROM", 3)
    cfg = Config().replace(unit={"state_dir": tmp_path / "state"})
    seeds = [s for s, _ in drawn_templates(cfg, recognizer, 4, workers=1, progress=False)]
    people = provision.choose_people(random.Random(1), None, employees=4, strangers=2, drawn_seeds=seeds)
    assert [p.key for p in people[:4]] == [f"synthetic:{s}" for s in seeds]
    assert not {p.key for p in people[4:]} & {p.key for p in people[:4]}  # strangers are other people
    counted.clear()
    templates = provision.enrolled_templates(cfg, people, recognizer)
    assert len(counted) == 1  # the cache check only
    assert sorted(templates) == ["E0001", "E0002", "E0003", "E0004"]
    frames = people[0].presentations()
    assert len(frames) == 6 and frames[0].shape == (480, 640)  # drawn when shown


def test_past_the_real_path_the_office_is_filled_with_drawn_palm_regions(recognizer, counted, monkeypatch):
    """Beyond REAL_PATH_MAX: palm regions drawn directly and coded by the model, distinct, cached, never presented."""
    from vendor_node.hand.gallery import Gallery

    monkeypatch.setattr(template_cache, "REAL_PATH_MAX", 2)
    cfg = Config()
    office = drawn_templates(cfg, recognizer, 6, workers=1, progress=False)
    assert len(office) == 6 and len(counted) >= 2
    seeds = [seed for seed, _ in office]
    assert not any(template_cache.is_region_seed(s) for s in seeds[:2])
    assert all(template_cache.is_region_seed(s) for s in seeds[2:])
    assert template_cache.is_region_person(f"synthetic:{seeds[3]}") and not template_cache.is_region_person(
        f"synthetic:{seeds[0]}")
    assert len({t for _, t in office}) == 6  # distinct people
    assert office[3][1] == template_cache.region_template(recognizer, seeds[3])  # the real model's coding
    gallery = Gallery.from_rows([str(s) for s in seeds], [t for _, t in office])
    region = recognizer.features_from_roi(template_cache.draw_palm_region(seeds[4]))
    assert recognizer.identify(region, gallery).employee_id == str(seeds[4])  # each region is its own person
    counted.clear()
    assert drawn_templates(cfg, recognizer, 6, workers=1, progress=False) == office  # read back from the caches
    assert template_cache.region_cache_path(recognizer).is_file()


def test_a_change_to_the_palm_finding_source_is_a_new_cache(recognizer, monkeypatch, tmp_path):
    """The cache's id follows the text of every palm-finding module: an edit to one of them (a moved palm square)
    names another cache file; the same source gives the same id."""
    assert template_cache.model_cache_id(recognizer) == template_cache.model_cache_id(recognizer)
    before = template_cache.model_cache_id(recognizer)
    hand = tmp_path / "vendor_node" / "hand"
    hand.mkdir(parents=True)
    real = Path(template_cache.__file__).resolve().parent.parent / "hand"
    for name in template_cache.PALM_FINDING_MODULES:
        (hand / f"{name}.py").write_bytes((real / f"{name}.py").read_bytes())
    (tmp_path / "vendor_node" / "sim").mkdir()
    monkeypatch.setattr(template_cache, "__file__", str(tmp_path / "vendor_node" / "sim" / "template_cache.py"))
    assert template_cache.model_cache_id(recognizer) == before  # (the same text, read from the copy)
    for name in template_cache.PALM_FINDING_MODULES:
        path = hand / f"{name}.py"
        original = path.read_bytes()
        path.write_bytes(original + b"\nSHIFT = 0.01\n")
        assert template_cache.model_cache_id(recognizer) != before, name
        path.write_bytes(original)
    assert template_cache.model_cache_id(recognizer) == before
