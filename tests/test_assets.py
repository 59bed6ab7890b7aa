"""firmware_assets/models.json: the active model and the accepted older ones, checked with clear errors."""
from __future__ import annotations

import json
import shutil

import pytest

from vendor_node.assets import active_manifest_path, model_set
from vendor_node.config import ASSETS_DIR, Config
from vendor_node.errors import ModelError
from vendor_node.hand.model import Embedder, read_manifest
from vendor_node.hand.recognition import Recognizer


@pytest.fixture
def assets(tmp_path):
    shutil.copytree(ASSETS_DIR / "palm-gabor-1", tmp_path / "palm-gabor-1")
    shutil.copytree(ASSETS_DIR / "palm-gabor-1", tmp_path / "palm-gabor-0")
    manifest = tmp_path / "palm-gabor-0" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_id": "palm-gabor-0"}))
    return tmp_path


def write_models(folder, listing) -> None:
    (folder / "models.json").write_text(json.dumps(listing))


def test_the_shipped_list_names_existing_model_folders():
    models = model_set(ASSETS_DIR)
    assert models.active.name == json.loads((ASSETS_DIR / "models.json").read_text())["active"]
    assert all((folder / "manifest.json").is_file() for folder in models.all)
    assert read_manifest(ASSETS_DIR)["model_id"] == models.active.name == Embedder.load(ASSETS_DIR).model_id
    assert active_manifest_path(ASSETS_DIR) == models.active / "manifest.json"


def test_a_unit_loads_every_listed_model_once_active_first(assets):
    write_models(assets, {"active": "palm-gabor-1", "accepted": ["palm-gabor-0"]})
    recognizer = Recognizer.from_config(Config().replace(unit={"assets_dir": assets}))
    assert [m.model_id for m in recognizer.matchers] == ["palm-gabor-1", "palm-gabor-0"]
    assert recognizer.model_id == "palm-gabor-1"
    assert model_set(assets / "palm-gabor-0").active == assets / "palm-gabor-0"  # a model folder alone


@pytest.mark.parametrize("listing, message", [
    ({"active": "palm-embed-9"}, "active: no manifest.json"),
    ({"active": "../palm-gabor-1"}, "expected a model folder name"),
    ({"active": "palm-gabor-1", "accepted": "palm-gabor-0"}, "accepted: expected a list"),
    ({"active": "palm-gabor-1", "accepted": ["palm-gabor-1"]}, "listed twice"),
    ({"active": "palm-gabor-1", "extra": 1}, "expected"),
    ("not an object", "expected"),
])
def test_a_bad_model_list_is_refused_by_name(assets, listing, message):
    write_models(assets, listing)
    with pytest.raises(ModelError, match=message) as caught:
        Embedder.load(assets)
    assert "models.json" in str(caught.value)


def test_no_list_and_no_manifest_is_refused(tmp_path):
    with pytest.raises(ModelError, match="manifest not found"):
        model_set(tmp_path)
