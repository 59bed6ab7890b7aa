"""The learned embedding models (firmware_assets/palm-embed-1, palm-embed-2): each one's format-2 manifest, hash
refusal, int8 in/out, templates of at most 256 bytes, op versions and tflite-runtime 2.14. A model not shipped skips."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_model import TFLITE214_ENV, _RUN_ON_214, _palm_like_roi
from vendor_node.config import ASSETS_DIR
from vendor_node.errors import ModelError
from vendor_node.hand.model import MAX_MODEL_BYTES, Embedder, embedding_scores, embedding_template, model_ops

MODELS = ("palm-embed-1", "palm-embed-2")


@pytest.fixture(scope="module", params=MODELS)
def model_dir(request):
    folder = ASSETS_DIR / request.param
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"{request.param} is not shipped")
    return folder


@pytest.fixture(scope="module")
def embedder(model_dir) -> Embedder:
    return Embedder.load(model_dir)


@pytest.fixture
def copy(tmp_path, model_dir):
    shutil.copytree(model_dir, tmp_path / "m")
    return tmp_path / "m"


def test_manifest_is_the_contract(embedder, model_dir):
    m = embedder.manifest
    assert (m["format"], m["model_id"], m["kind"], embedder.kind) == (2, model_dir.name, "embedding", "embedding")
    assert m["input"]["shape"] == [1, 128, 128, 1] and m["output"]["shape"] == [1, 128]
    assert m["input"]["dtype"] == m["output"]["dtype"] == "int8"
    assert embedder.model_path.stat().st_size <= MAX_MODEL_BYTES
    assert m["sha256"] == hashlib.sha256(embedder.model_path.read_bytes()).hexdigest()
    d = m["decision"]
    assert [p[0] for p in d["fmr_points"]] == [10.0 ** -k for k in range(2, 10)]
    assert len(d["fmr_point_sources"]) == len(d["fmr_points"])
    thresholds = [p[1] for p in d["fmr_points"]]
    assert thresholds == sorted(thresholds) and d["min_threshold"] <= d["threshold"]
    split = m["split"]
    assert not (set(split["train"]) & set(split["calibrate"]) or set(split["train"]) & set(split["test"])
                or set(split["calibrate"]) & set(split["test"]))
    assert m["held_out"]["tongji_dev_test"]["genuine"] > 0


def test_embedding_is_int8_in_and_out_and_the_template_fits_256_bytes(embedder):
    roi = _palm_like_roi(5)
    assert embedder.quantize(roi).dtype == np.int8
    assert embedder._interpreter.get_output_details()[0]["dtype"] == np.int8
    e = embedder.embed(roi)
    assert e.shape == (128,) and e.dtype == np.float32 and np.linalg.norm(e) > 0
    template = embedding_template(e)
    assert template.dtype == np.int8 and template.nbytes <= 256
    assert embedding_scores(template, template[None])[0] == pytest.approx(1.0, abs=1e-6)
    other = embedding_template(embedder.embed(_palm_like_roi(6)))
    assert embedding_scores(template, other[None])[0] < 0.99


def test_another_hash_is_refused(copy):
    path = copy / "palm_embed_int8.tflite"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* does not match"):
        Embedder.load(copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: {**m, "kind": "palm_code"}, "kind"),
    (lambda m: {**m, "model_id": ""}, "model_id"),
    (lambda m: {**m, "embedding": {**m["embedding"], "dim": 64}}, "embedding.dim"),
    (lambda m: {**m, "decision": {**m["decision"], "fmr_points": [[0, 0.5]]}}, "fmr_points"),
    (lambda m: {**m, "decision": {k: v for k, v in m["decision"].items() if k != "min_threshold"}}, "min_threshold"),
    (lambda m: {**m, "output": {**m["output"], "shape": [1, 8, 8, 2]}}, r"output.shape: expected \[1, D\]"),
])
def test_a_malformed_format_2_manifest_is_refused(copy, change, message):
    path = copy / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(ModelError, match=message):
        Embedder.load(copy)


def test_op_versions_are_the_verified_ones(embedder):
    verified = {(op["name"], op["version"]) for op in embedder.manifest["ops"]}
    for op in model_ops(embedder.model_path.read_bytes()):
        assert (op.name, op.version) in verified, f"{op.name} v{op.version} not verified on tflite-runtime 2.14"
    assert embedder.manifest["tflite_runtime_2_14"].startswith("ok"), embedder.manifest["tflite_runtime_2_14"]


def test_runs_on_tflite_runtime_2_14_with_the_same_output(embedder, tmp_path):
    python = os.environ.get(TFLITE214_ENV)
    if not python:
        pytest.skip(f"{TFLITE214_ENV} is not set (scripts/dev.sh test creates .venv-tflite214 and sets it)")
    value = embedder.quantize(_palm_like_roi(3))
    np.save(tmp_path / "palm.npy", value)
    run = subprocess.run([python, "-c", _RUN_ON_214, str(embedder.model_path), str(tmp_path / "palm.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].startswith("2.14")
    embedder._interpreter.set_tensor(embedder._input["index"], value)
    embedder._interpreter.invoke()
    ours = embedder._interpreter.get_tensor(embedder._output["index"]).astype(np.int16)
    theirs = np.load(tmp_path / "palm.npy.out.npy").astype(np.int16)
    assert theirs.shape == ours.shape == (1, 128) and int(np.abs(theirs - ours).max()) <= 1


def test_every_embedding_model_tests_the_same_people():
    """A new model is compared with the old on the same test palms: its split must be the old one's."""
    splits = [json.loads((ASSETS_DIR / name / "manifest.json").read_text())["split"] for name in MODELS
              if (ASSETS_DIR / name / "manifest.json").is_file()]
    for split in splits[1:]:
        assert {k: split[k] for k in ("train", "calibrate", "test")} == \
            {k: splits[0][k] for k in ("train", "calibrate", "test")}
