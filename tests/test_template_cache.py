"""The drawn employees' template cache: made once through the real enrollment, reused by prefix, never trusted when
made by other code, kept outside the state folder; and a simulated office provisioned from it."""
import random

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
