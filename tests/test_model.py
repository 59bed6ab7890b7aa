"""The shipped int8 model: hash-checked loading, refusals that name the problem, op versions, tflite-runtime 2.14."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vendor_node.config import ASSETS_DIR

GABOR_DIR = ASSETS_DIR / "palm-gabor-1"  # the palm-code model (format 1), kept beside the learned one
from vendor_node.errors import ModelError
from vendor_node.hand.model import MAX_MODEL_BYTES, Embedder, model_ops, read_manifest

TFLITE214_ENV = "VENDOR_NODE_TFLITE214_PYTHON"


def _palm_like_roi(seed: int = 0) -> np.ndarray:
    """Dark curved lines on a mid-grey palm: enough texture for the oriented filters to disagree."""
    rng = np.random.default_rng(seed)
    roi = np.full((128, 128), 150, np.uint8)
    for _ in range(12):
        center = tuple(int(v) for v in rng.integers(0, 128, 2))
        axes = tuple(int(v) for v in rng.integers(20, 90, 2))
        cv2.ellipse(roi, center, axes, float(rng.uniform(0, 180)), 0, float(rng.uniform(60, 200)), 70,
                    int(rng.integers(1, 4)))
    roi = cv2.GaussianBlur(roi, (3, 3), 0)
    return np.clip(roi.astype(np.int16) + rng.normal(0, 3, roi.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(GABOR_DIR)


@pytest.fixture
def assets_copy(tmp_path) -> Path:
    target = tmp_path / "assets"
    shutil.copytree(GABOR_DIR, target)
    return target


def _model_path(assets: Path) -> Path:
    return assets / read_manifest(assets)["model_file"]


def test_shipped_model_is_full_integer_and_small(embedder):
    manifest = embedder.manifest
    assert embedder.model_path.stat().st_size <= MAX_MODEL_BYTES
    assert manifest["input"]["dtype"] == manifest["output"]["dtype"] == "int8"
    assert manifest["sha256"] == hashlib.sha256(embedder.model_path.read_bytes()).hexdigest()
    for key in ("seed", "subjects", "held_out_subjects"):
        assert key in manifest["training"], f"manifest.training lacks {key!r}"


def test_embed_is_the_dequantized_output_and_matches_the_float_filters(embedder):
    roi = _palm_like_roi()
    vector = embedder.embed(roi)
    h, w, c = embedder.output_shape
    assert vector.dtype == np.float32 and vector.shape == (h * w * c,)
    assert np.array_equal(vector, embedder.responses(roi).ravel())
    stack = np.stack([roi, roi[::-1], np.full_like(roi, 128)])  # a probe's poses: one quantize, one invoke each
    many = embedder.responses_of(stack)
    assert many.dtype == np.float32 and many.shape == (3, h, w, c)
    for k in range(3):
        assert np.array_equal(many[k], embedder.responses(stack[k]))
    with pytest.raises(ModelError, match="uint8 ROI"):
        embedder.responses_of(stack[:, :64])
    # The int8 path (quantize, invoke, dequantize) must pick the same winning orientation as float maths.
    spec = importlib.util.spec_from_file_location("train_gabor", ASSETS_DIR.parent / "scripts" / "train_gabor.py")
    train_model = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_gabor", train_model)
    spec.loader.exec_module(train_model)
    filters = embedder.manifest["filters"]
    reference = train_model.FloatEmbedder(
        train_model.gabor_bank(filters["size"], filters["sigma"], filters["wavelength"]), embedder.manifest)
    float_responses = reference.responses(roi)[4:-4, 4:-4]
    ordered = np.sort(float_responses, axis=-1)
    clear = (ordered[..., 1] - ordered[..., 0]) > np.median(ordered[..., 1] - ordered[..., 0])  # cells the code trusts
    want = np.argmin(float_responses, axis=-1)[clear]
    got = np.argmin(embedder.responses(roi)[4:-4, 4:-4], axis=-1)[clear]
    assert float(np.mean(want == got)) > 0.9


def test_embed_refuses_a_wrong_roi(embedder):
    with pytest.raises(ModelError, match="uint8 ROI 128x128"):
        embedder.embed(np.zeros((64, 64), np.uint8))
    with pytest.raises(ModelError, match="float32"):
        embedder.embed(np.zeros((128, 128), np.float32))


def test_model_with_another_hash_is_refused(assets_copy):
    path = _model_path(assets_copy)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* does not match") as caught:
        Embedder.load(assets_copy)
    assert path.name in str(caught.value)


def test_missing_model_file_is_refused(assets_copy):
    path = _model_path(assets_copy)
    path.unlink()
    with pytest.raises(ModelError, match="model file not found") as caught:
        Embedder.load(assets_copy)
    assert path.name in str(caught.value)


def test_missing_manifest_is_refused(assets_copy):
    (assets_copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match="manifest not found"):
        Embedder.load(assets_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "missing key 'sha256'"),
    (lambda m: {**m, "sha256": "abc"}, "64 hex digits"),
    (lambda m: {**m, "output": {**m["output"], "dtype": "float32"}}, "full-integer"),
    (lambda m: {**m, "input": {**m["input"], "scale": 0.5}}, "input quantization"),
    (lambda m: {**m, "decision": {"threshold": 3, "margin": 0.0}}, "decision.threshold"),
    (lambda m: {**m, "model_file": "../elsewhere.tflite"}, "beside the manifest"),
    (lambda m: {**m, "format": 99}, "format 99"),
])
def test_malformed_manifest_is_refused(assets_copy, change, message):
    manifest_path = assets_copy / "manifest.json"
    changed = change(json.loads(manifest_path.read_text()))
    manifest_path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ModelError, match=message):
        Embedder.load(assets_copy)


def test_oversized_model_is_refused(assets_copy):
    path = _model_path(assets_copy)
    path.write_bytes(path.read_bytes() + b"\0" * (MAX_MODEL_BYTES + 1))
    with pytest.raises(ModelError, match="byte limit"):
        Embedder.load(assets_copy)


def test_op_versions_are_the_ones_verified_on_tflite_runtime_2_14(embedder):
    """Fast guard: a retrained model with a new op or op version must be re-verified (names the op)."""
    ops = model_ops(embedder.model_path.read_bytes())
    assert ops, "no operators found in the model"
    verified = {(op["name"], op["version"]) for op in embedder.manifest["ops"]}
    for op in ops:
        assert (op.name, op.version) in verified, f"op {op.name} version {op.version} was not verified on tflite-runtime 2.14"
    assert embedder.manifest["tflite_runtime_2_14"].startswith("ok"), embedder.manifest["tflite_runtime_2_14"]
    names = [op.name for op in ops]
    interpreter_names = [d["op_name"] for d in embedder._interpreter._get_ops_details() if d["op_name"] != "DELEGATE"]
    assert sorted(names) == sorted(interpreter_names)


def test_model_ops_refuses_garbage():
    with pytest.raises(ModelError, match="not a readable TFLite flatbuffer"):
        model_ops(b"\x08\x00\x00\x00garbage")


_RUN_ON_214 = """
import sys, numpy as np
from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
for name in sys.argv[2:]:
    it.set_tensor(i["index"], np.load(name))
    it.invoke()
    np.save(name + ".out.npy", it.get_tensor(o["index"]))
import tflite_runtime
print(tflite_runtime.__version__)
"""

_EMBED_ON_214 = """
import sys, numpy as np
from vendor_node.hand.model import Embedder
embedder = Embedder.load(sys.argv[1])  # no ai_edge_litert here: the tflite_runtime fallback
assert type(embedder._interpreter).__module__.startswith("tflite_runtime"), type(embedder._interpreter)
np.save(sys.argv[3], embedder.embed(np.load(sys.argv[2])))
"""


def test_every_op_runs_on_tflite_runtime_2_14(embedder, tmp_path):
    """Older Pi images carry tflite-runtime 2.14: the shipped model must load and agree with LiteRT there."""
    python = os.environ.get(TFLITE214_ENV)
    if not python:
        pytest.skip(f"{TFLITE214_ENV} is not set (scripts/dev.sh test creates .venv-tflite214 and sets it)")
    if not Path(python).exists():
        pytest.fail(f"{TFLITE214_ENV}={python}: no such interpreter")
    inputs = {"zeros": np.zeros((1, 128, 128, 1), np.int8), "palm": embedder.quantize(_palm_like_roi(3))}
    names = []
    for key, value in inputs.items():
        np.save(tmp_path / f"{key}.npy", value)
        names.append(str(tmp_path / f"{key}.npy"))
    run = subprocess.run([python, "-c", _RUN_ON_214, str(embedder.model_path), *names],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"tflite-runtime 2.14 cannot run {embedder.model_path.name}:\n{run.stderr[-2000:]}"
    assert run.stdout.strip().splitlines()[-1].startswith("2.14")
    for key, value in inputs.items():
        embedder._interpreter.set_tensor(embedder._input["index"], value)
        embedder._interpreter.invoke()
        ours = embedder._interpreter.get_tensor(embedder._output["index"]).astype(np.int16)
        theirs = np.load(tmp_path / f"{key}.npy.out.npy").astype(np.int16)
        assert theirs.shape == ours.shape
        assert int(np.abs(theirs - ours).max()) <= 1, f"{key}: outputs differ between LiteRT and tflite-runtime 2.14"
    # The unit's own loader on such an image: Embedder falls back to tflite_runtime (numpy 1.x there).
    roi = _palm_like_roi(4)
    np.save(tmp_path / "roi.npy", roi)
    env = {**os.environ, "PYTHONPATH": str(ASSETS_DIR.parent)}
    run = subprocess.run([python, "-c", _EMBED_ON_214, str(GABOR_DIR), str(tmp_path / "roi.npy"),
                          str(tmp_path / "embedding.npy")], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, f"Embedder cannot load under tflite-runtime 2.14:\n{run.stderr[-2000:]}"
    assert np.allclose(np.load(tmp_path / "embedding.npy"), embedder.embed(roi), atol=0.02)


def test_import_needs_no_tflite_runtime():
    code = "import sys, vendor_node.hand.model, vendor_node.hand.recognition; " \
           "assert 'ai_edge_litert' not in sys.modules and 'tflite_runtime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the training script's bookkeeping (no TensorFlow needed) -------------------------
@pytest.fixture(scope="module")
def train_model():
    spec = importlib.util.spec_from_file_location("train_gabor", ASSETS_DIR.parent / "scripts" / "train_gabor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_gabor", module)
    spec.loader.exec_module(module)
    return module


def test_manifest_holds_out_people_it_did_not_train_on(embedder):
    training = embedder.manifest["training"]
    for name, trained in training["subjects"].items():
        held = training["held_out_subjects"][name]
        assert held, f"{name}: nobody held out"
        assert not set(trained) & set(held), f"{name}: people both trained on and held out"
    assert embedder.manifest["metrics"]["held_out_enroll_1"], "no held-out figures in the manifest"


def test_subject_split_is_seeded_and_keeps_people_labelled_twice_together(train_model):
    samples = [train_model.Sample("coep_dev", f"{s}/1.jpg", s, "", "") for s in
               ["076", "163", "077", "153", "080", "155"] + [f"{i:03d}" for i in range(200, 230)]]
    first = train_model.split_subjects(samples, 0.5, seed=3)
    assert first == train_model.split_subjects(samples, 0.5, seed=3)
    assert first != train_model.split_subjects(samples, 0.5, seed=4)
    train, held = first
    for a, b in train_model.SAME_PERSON["coep_dev"]:
        assert (a in train) == (b in train)
    assert sorted(train + held) == sorted(s.subject for s in samples)


@pytest.fixture(scope="module")
def training_metrics(train_model):
    import training_metrics  # scripts/ is on sys.path once train_model is loaded

    return training_metrics


def test_error_rates_on_a_known_case(training_metrics):
    genuine = np.array([0.9, 0.8, 0.7, 0.4])
    impostor = np.array([0.1, 0.2, 0.3, 0.5])
    rates = training_metrics.error_rates(genuine, impostor)
    assert rates["eer"] == pytest.approx(0.25)
    assert rates["fnmr_at_fmr_1e-3"] == pytest.approx(0.25)  # threshold above 0.5 loses the 0.4 genuine


def test_decision_policy_in_measurements(training_metrics):
    assert training_metrics.decide(np.array([0.9, 0.5]), 0.7, 0.05) == 0
    assert training_metrics.decide(np.array([0.6, 0.5]), 0.7, 0.05) == -1  # below threshold
    assert training_metrics.decide(np.array([0.9, 0.87]), 0.7, 0.05) == -1  # within the margin


def test_quantizing_by_the_pixel_table_is_the_manifests_scaling_bit_for_bit():
    """Embedder.quantize looks each pixel up in a table made once; it equals the float steps on the whole ROI."""
    embedder = Embedder.load(GABOR_DIR)
    rng = np.random.default_rng(5)
    rois = rng.integers(0, 256, size=(9, embedder.input_size, embedder.input_size), dtype=np.uint8)
    rois[0, :2] = np.arange(256, dtype=np.uint8).reshape(2, 128)  # every pixel value
    want = embedder.quantized_pixels(rois)[..., None]
    np.testing.assert_array_equal(embedder.quantize(rois), want)
    np.testing.assert_array_equal(embedder.quantize(rois[3]), want[3:4])
    assert embedder.quantize(rois).dtype == np.int8 and embedder.quantize(rois[3]).shape == (1,) + want.shape[1:]
