"""The int8 palm-texture model: loaded once, hash-checked against its manifest.

Why a manifest: the unit must never run a model nobody measured. ``manifest.json``
beside the model names the file, its sha256, its input/output quantization and
how it was trained and measured; a file that does not match is refused
(ModelError) and the unit stays out of service instead of picking wrong payers.

LiteRT (``ai_edge_litert``) or, on older Pi images, ``tflite_runtime`` is imported
only inside :meth:`Embedder.load`, so ``import vendor_node`` works anywhere.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..assets import MANIFEST_NAME, model_set
from ..errors import ModelError

MANIFEST_FORMATS = (1, 2)  # 1: oriented-filter responses made into palm codes; 2: a learned embedding
MAX_MODEL_BYTES = 1024 * 1024

# Builtin operator codes (tensorflow/lite/schema/schema.fbs) of the ops a palm model may use;
# anything else is still listed, by number.
BUILTIN_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 11: "L2_NORMALIZATION", 14: "LOGISTIC", 17: "MAX_POOL_2D",
    18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE", 25: "SOFTMAX", 28: "TANH", 34: "PAD",
    40: "MEAN", 41: "SUB", 56: "ARG_MAX", 79: "ARG_MIN", 83: "PACK", 101: "ABS", 114: "QUANTIZE",
}


@dataclass(frozen=True)
class OpInfo:
    name: str
    version: int


class Embedder:
    """One TFLite interpreter (one thread) turning an aligned palm ROI into oriented texture responses
    (``kind`` "palm_code", manifest format 1) or into a learned embedding (``kind`` "embedding", format 2)."""

    def __init__(self, interpreter, manifest: dict, model_path: Path):
        self._interpreter = interpreter
        self.manifest = manifest
        self.model_path = model_path
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        q_in, q_out = manifest["input"], manifest["output"]
        self._in_scale, self._in_zero = float(q_in["scale"]), int(q_in["zero_point"])
        self._out_scale, self._out_zero = float(q_out["scale"]), int(q_out["zero_point"])
        self._pixel_offset = float(q_in["pixel_offset"])
        self._pixel_divisor = float(q_in["pixel_divisor"])
        # the same float32 steps for each of the 256 pixel values once (elementwise, so bit for bit what a whole
        # ROI gives): quantizing a probe's nine poses is one look-up, not five float passes (1.9 ms CPU there)
        self._input_table = self.quantized_pixels(np.arange(256, dtype=np.uint8))
        self.input_size = int(q_in["shape"][1])
        self.output_shape = tuple(int(v) for v in q_out["shape"][1:])  # (H, W, C), or (D,) for an embedding
        self.model_id = manifest.get("model_id") or model_path.parent.name

    @classmethod
    def load(cls, assets_dir: Path | str) -> "Embedder":
        """Verify the manifest and the model's sha256, then build the interpreter once; ModelError otherwise.

        ``assets_dir`` is a model folder, or ``firmware_assets/`` whose ``models.json`` names the active one.
        """
        assets_dir = model_set(assets_dir).active
        manifest = read_manifest(assets_dir)
        model_path = assets_dir / manifest["model_file"]
        data = _read_model_bytes(model_path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["sha256"].lower():
            raise ModelError(
                f"{model_path}: sha256 {digest} does not match {manifest['sha256']} in "
                f"{assets_dir / MANIFEST_NAME}; refusing to run an unmeasured model"
            )
        palm_code = manifest.get("kind", "palm_code") == "palm_code"
        interpreter = _make_interpreter(data, model_path, builtin_kernels=palm_code)
        _check_io(interpreter, manifest, model_path)
        return cls(interpreter, manifest, model_path)

    def quantize(self, roi: np.ndarray) -> np.ndarray:
        """The ROI (uint8 pixels) as the model's int8 input tensor, batch of one; a stack of ROIs (n, S, S): n
        tensors (n, S, S, 1) at once."""
        if roi.shape[-2:] != (self.input_size, self.input_size) or roi.ndim not in (2, 3) or roi.dtype != np.uint8:
            raise ModelError(
                f"{self.model_path.name}: expected a uint8 ROI {self.input_size}x{self.input_size}, "
                f"got {roi.dtype} {roi.shape}"
            )
        q = self._input_table[roi][..., None]
        return q[None] if roi.ndim == 2 else q

    def quantized_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The int8 input value of each uint8 pixel value: the manifest's scaling, then the input quantization."""
        real = (pixels.astype(np.float32) - self._pixel_offset) / self._pixel_divisor
        q = np.round(real / self._in_scale) + self._in_zero
        return np.clip(q, -128, 127).astype(np.int8)

    def responses_of(self, rois: np.ndarray) -> np.ndarray:
        """:meth:`responses` of a stack of ROIs (n, S, S): float32 (n, H, W, C), quantized and dequantized once
        for all (a palm-code probe's poses)."""
        tensors = self.quantize(rois)
        raw = np.empty((len(rois),) + tuple(self.output_shape), np.int8)
        for k in range(len(rois)):
            self._interpreter.set_tensor(self._input["index"], tensors[k:k + 1])
            self._interpreter.invoke()
            raw[k] = self._interpreter.get_tensor(self._output["index"])[0]
        return (raw.astype(np.float32) - self._out_zero) * self._out_scale

    def responses(self, roi: np.ndarray) -> np.ndarray:
        """Dequantized output map, float32 (H, W, C): one channel per filter orientation."""
        self._interpreter.set_tensor(self._input["index"], self.quantize(roi))
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output["index"])[0]
        return (raw.astype(np.float32) - self._out_zero) * self._out_scale

    @classmethod
    def load_all(cls, assets_dir: Path | str) -> "list[Embedder]":
        """Every model the unit matches with (``models.json``): the active one first, then the accepted ones."""
        return [cls.load(folder) for folder in model_set(assets_dir).all]

    @property
    def kind(self) -> str:
        """"embedding" for a learned model (format 2), "palm_code" for the oriented-filter maps (format 1)."""
        return self.manifest.get("kind", "palm_code")

    def embed(self, roi: np.ndarray) -> np.ndarray:
        """The model's int8 output dequantized, float32 (D,), not normalised: feed it to :func:`embedding_template`."""
        return self.responses(roi).ravel()

    def ops(self) -> list[OpInfo]:
        """Every operator of the model with its version, in execution order."""
        return model_ops(self.model_path.read_bytes())


# --- manifest -----------------------------------------------------------------
_REQUIRED = {
    "format": int, "model_file": str, "sha256": str, "input": dict, "output": dict, "decision": dict,
}
_IO_KEYS = {"shape": list, "dtype": str, "scale": (int, float), "zero_point": int}


def read_checked_manifest(path: Path, what: str, required: dict) -> dict:
    """A model folder's manifest parsed, with the keys every model file needs checked (each ``required`` key present
    with its type, a 64-hex ``sha256``, a ``model_file`` beside the manifest); ModelError naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the {what}: {exc}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key, kind in required.items():
        if key not in manifest:
            raise ModelError(f"{path}: missing key {key!r}")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ModelError(f"{path}: {key}: expected {names}, got {manifest[key]!r}")
    if len(manifest["sha256"]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in manifest["sha256"]):
        raise ModelError(f"{path}: sha256: expected 64 hex digits, got {manifest['sha256']!r}")
    if "/" in manifest["model_file"] or manifest["model_file"] in ("", ".", ".."):
        raise ModelError(f"{path}: model_file must be a file name beside the manifest, got {manifest['model_file']!r}")
    return manifest


def read_manifest(assets_dir: Path | str) -> dict:
    """The parsed manifest, with every field the unit relies on checked; ModelError naming what is wrong.

    ``assets_dir``: a model folder, or ``firmware_assets/`` (then the active model's manifest).
    """
    path = model_set(assets_dir).active / MANIFEST_NAME
    manifest = read_checked_manifest(path, "model manifest", _REQUIRED)
    if manifest["format"] not in MANIFEST_FORMATS:
        raise ModelError(f"{path}: format {manifest['format']} is not supported (expected one of {MANIFEST_FORMATS})")
    for side in ("input", "output"):
        block = manifest[side]
        for key, kind in _IO_KEYS.items():
            if key not in block:
                raise ModelError(f"{path}: {side}.{key}: missing")
            if not isinstance(block[key], kind) or isinstance(block[key], bool):
                raise ModelError(f"{path}: {side}.{key}: bad value {block[key]!r}")
        if block["dtype"] != "int8":
            raise ModelError(f"{path}: {side}.dtype: the unit runs full-integer models only, got {block['dtype']!r}")
        want_rank = 2 if side == "output" and manifest["format"] == 2 else 4
        if len(block["shape"]) != want_rank or block["shape"][0] != 1:
            expected = "[1, D]" if want_rank == 2 else "[1, H, W, C]"
            raise ModelError(f"{path}: {side}.shape: expected {expected}, got {block['shape']!r}")
        if not block["scale"] > 0:
            raise ModelError(f"{path}: {side}.scale: must be positive, got {block['scale']!r}")
    for key in ("pixel_offset", "pixel_divisor"):
        if not isinstance(manifest["input"].get(key), (int, float)):
            raise ModelError(f"{path}: input.{key}: missing or not a number")
    if not manifest["input"]["pixel_divisor"]:
        raise ModelError(f"{path}: input.pixel_divisor: must not be zero")
    for key in ("threshold", "margin"):
        value = manifest["decision"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ModelError(f"{path}: decision.{key}: expected a number in 0..1, got {value!r}")
    if manifest["format"] == 2:
        _check_embedding_manifest(path, manifest)
    return manifest


def _check_embedding_manifest(path: Path, manifest: dict) -> None:
    """Format 2: a learned embedding, its id (templates name it) and its false-match-rate curve."""
    if manifest.get("kind") != "embedding":
        raise ModelError(f"{path}: kind: format 2 expects \"embedding\", got {manifest.get('kind')!r}")
    if not isinstance(manifest.get("model_id"), str) or not manifest["model_id"]:
        raise ModelError(f"{path}: model_id: expected a non-empty string, got {manifest.get('model_id')!r}")
    dim = manifest["output"]["shape"][1]
    if not isinstance(manifest.get("embedding"), dict) or manifest["embedding"].get("dim") != dim:
        raise ModelError(f"{path}: embedding.dim: expected {dim} (the output width)")
    points = manifest["decision"].get("fmr_points")
    if not isinstance(points, list) or not points or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) and 0 < p[0] < 1
            for p in points):
        raise ModelError(f"{path}: decision.fmr_points: expected [[fmr, threshold], ...] with 0 < fmr < 1")
    for key in ("min_threshold", "min_margin"):
        value = manifest["decision"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1 <= value <= 1:
            raise ModelError(f"{path}: decision.{key}: expected a number in -1..1, got {value!r}")


# --- embedding templates and their score (the contract the matcher and the calibration share) -----
def embedding_template(e: np.ndarray) -> np.ndarray:
    """int8 template of an embedding: clip(round(127 * e / |e|), -127, 127); all zeros for a zero vector."""
    e = np.asarray(e, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(e))
    if norm == 0:
        return np.zeros(e.shape, np.int8)
    return np.clip(np.round(127.0 * e / norm), -127, 127).astype(np.int8)


def embedding_scores(q_probe: np.ndarray, q_gallery: np.ndarray) -> np.ndarray:
    """Cosine of int8 templates: dot(qa, qb) / (|qa| |qb|), float32 (N,) for a gallery (N, D); 0 for a zero template."""
    probe = np.asarray(q_probe).astype(np.float32).ravel()
    gallery = np.asarray(q_gallery).astype(np.float32).reshape(-1, probe.size)
    norms = np.linalg.norm(gallery, axis=1) * np.linalg.norm(probe)
    dots = gallery @ probe
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _read_model_bytes(model_path: Path) -> bytes:
    try:
        size = model_path.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"{model_path}: model file not found (named by {MANIFEST_NAME})") from None
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{model_path}: {size} bytes is over the {MAX_MODEL_BYTES} byte limit")
    try:
        return model_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{model_path}: cannot read: {exc}") from None


def _make_interpreter(data: bytes, model_path: Path, builtin_kernels: bool = False):
    """One single-thread interpreter. ``builtin_kernels``: TFLite's own int8 kernels without the XNNPACK
    delegate (the palm-code model: its one 17x17 convolution over a single channel runs 4x cheaper there,
    0.46 vs 1.85 ms CPU here, outputs within 1 of XNNPACK's in 0.03% of values)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise ModelError(
                "neither ai-edge-litert nor tflite-runtime is installed: pip install ai-edge-litert"
            ) from None
    options = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} \
        if builtin_kernels else {}
    try:
        interpreter = Interpreter(model_content=data, num_threads=1, **options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{model_path}: the interpreter cannot load it: {exc}") from None
    return interpreter


def _check_io(interpreter, manifest: dict, model_path: Path) -> None:
    """The model's tensors must be what the manifest says, or the quantization maths would be wrong."""
    for side, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        if len(details) != 1:
            raise ModelError(f"{model_path}: expected one {side} tensor, found {len(details)}")
        d, want = details[0], manifest[side]
        if np.dtype(d["dtype"]) != np.int8:
            raise ModelError(f"{model_path}: {side} tensor is {np.dtype(d['dtype'])}, expected int8")
        if list(d["shape"]) != list(want["shape"]):
            raise ModelError(f"{model_path}: {side} shape {list(d['shape'])} differs from manifest {want['shape']}")
        scale, zero = d["quantization"]
        if not np.isclose(scale, want["scale"], rtol=1e-6) or zero != want["zero_point"]:
            raise ModelError(
                f"{model_path}: {side} quantization ({scale}, {zero}) differs from manifest "
                f"({want['scale']}, {want['zero_point']})"
            )


# --- reading operator codes and versions straight from the flatbuffer ---------
def model_ops(data: bytes) -> list[OpInfo]:
    """Operators of subgraph 0 with their versions, read from the .tflite flatbuffer (schema.fbs).

    Used to prove the op set stays within what tflite-runtime 2.14 (older Pi images) runs.
    """
    try:
        model = struct.unpack_from("<I", data, 0)[0]  # root table
        codes = []
        for pos in _vector_of_tables(data, model, 1):  # Model.operator_codes
            deprecated = _scalar(data, pos, 0, "<b", 0)
            version = _scalar(data, pos, 2, "<i", 1)
            builtin = _scalar(data, pos, 3, "<i", 0)
            code = max(deprecated, builtin)
            codes.append(OpInfo(BUILTIN_NAMES.get(code, f"BUILTIN_{code}"), version))
        subgraphs = _vector_of_tables(data, model, 2)  # Model.subgraphs
        operators = _vector_of_tables(data, subgraphs[0], 3)  # SubGraph.operators
        return [codes[_scalar(data, op, 0, "<I", 0)] for op in operators]  # Operator.opcode_index
    except (struct.error, IndexError) as exc:
        raise ModelError(f"not a readable TFLite flatbuffer: {exc}") from None


def _field_pos(data: bytes, table: int, field: int) -> int | None:
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    entry = 4 + 2 * field
    if entry >= vtable_size:
        return None
    offset = struct.unpack_from("<H", data, vtable + entry)[0]
    return table + offset if offset else None


def _scalar(data: bytes, table: int, field: int, fmt: str, default: int) -> int:
    pos = _field_pos(data, table, field)
    return default if pos is None else struct.unpack_from(fmt, data, pos)[0]


def _vector_of_tables(data: bytes, table: int, field: int) -> list[int]:
    pos = _field_pos(data, table, field)
    if pos is None:
        return []
    vec = pos + struct.unpack_from("<I", data, pos)[0]
    count = struct.unpack_from("<I", data, vec)[0]
    out = []
    for i in range(count):
        elem = vec + 4 + 4 * i
        out.append(elem + struct.unpack_from("<I", data, elem)[0])
    return out
