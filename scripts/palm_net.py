"""The learned palm embedding network, its margin-loss training loop and its full-integer int8 export.

Training-only: imports tensorflow, which the unit never installs. The network is CompNet's idea made small:
learnable oriented filters (initialised as a Gabor bank) and a competition layer (softmax across orientations:
which direction the crease runs wins), then a depthwise-separable trunk and a fully connected 128-d embedding,
trained with a CosFace margin (cos(theta) - m, scaled by s) so that same-palm embeddings cluster by angle,
which is exactly the cosine the unit scores with.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np

PIXEL_OFFSET, PIXEL_DIVISOR = 128.0, 128.0
SIZE = 128


def to_input(rois: np.ndarray) -> np.ndarray:
    """uint8 ROIs (N, 128, 128) as the float input the int8 model's input quantization stands for."""
    return ((rois.astype(np.float32) - PIXEL_OFFSET) / PIXEL_DIVISOR)[..., None]


def gabor_bank(orientations: int, size: int = 9, sigma: float = 2.5, wavelength: float = 7.0) -> np.ndarray:
    """Even Gabor kernels (zero mean), shape (size, size, 1, orientations): the oriented filters' start."""
    kernels = []
    for j in range(orientations):
        k = cv2.getGaborKernel((size, size), sigma, np.pi * j / orientations, wavelength, 0.6, 0, ktype=cv2.CV_32F)
        k -= k.mean()
        kernels.append(k / np.abs(k).sum() * 4)
    return np.stack(kernels, -1)[:, :, None, :].astype(np.float32)


def build_embedder(dim: int = 128, orientations: int = 12, width: int = 64, head: str = "flatten",
                   dropout: float | None = None):
    """Keras model: uint8-normalised ROI (128, 128, 1) -> embedding (dim,).

    ``head``: "flatten" (8x8x32 map, fully connected: where each line sits) or "gdc" (a global depthwise 8x8
    convolution, MobileFaceNet's: a learned weight per place and channel, 30x fewer weights, overfits less).
    ``dropout`` before the embedding: None = the head's default (0.2 flatten, 0.3 gdc).
    """
    import tensorflow as tf
    from tensorflow import keras
    layers = keras.layers

    def separable(x, filters, stride, name):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
        x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_pw_relu")(x)

    inputs = keras.Input((SIZE, SIZE, 1), name="roi")
    oriented = layers.Conv2D(orientations, 9, strides=2, padding="same", use_bias=False,
                             name="oriented_filters")(inputs)  # 64x64
    x = layers.Softmax(axis=-1, name="competition")(oriented)  # which orientation wins at each place
    x = layers.Conv2D(width // 2, 3, strides=2, padding="same", use_bias=False, name="stem")(x)  # 32x32
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = separable(x, width, 1, "b1")
    x = separable(x, 2 * width, 2, "b2")  # 16x16
    x = separable(x, 2 * width, 1, "b3")
    x = separable(x, 2 * width, 2, "b4")  # 8x8
    if head == "gdc":
        x = layers.DepthwiseConv2D(8, padding="valid", use_bias=False, name="gdc")(x)  # 8x8 -> 1x1, per place
        x = layers.BatchNormalization(name="gdc_bn")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(0.3 if dropout is None else dropout, name="dropout")(x)
    else:
        x = layers.Conv2D(32, 1, use_bias=False, name="squeeze")(x)
        x = layers.BatchNormalization(name="squeeze_bn")(x)
        x = layers.ReLU(6.0, name="squeeze_relu")(x)
        x = layers.Flatten(name="flatten")(x)  # palm lines sit in places: keep where, not only what
        x = layers.Dropout(0.2 if dropout is None else dropout, name="dropout")(x)
    embedding = layers.Dense(dim, name="embedding")(x)
    model = keras.Model(inputs, embedding, name="palm_embed")
    model.get_layer("oriented_filters").set_weights([gabor_bank(orientations)])
    return model


class CosFaceHead:
    """Class centres on the unit sphere; logits s * (cos - m on the true class)."""

    def __init__(self, dim: int, classes: int, seed: int, scale: float = 32.0, margin: float = 0.3,
                 pair_weight: float = 0.0, pair_margin: float = 0.3):
        import tensorflow as tf
        init = np.random.default_rng(seed).normal(0, 1, (dim, classes)).astype(np.float32)
        self.weights = tf.Variable(init / np.linalg.norm(init, axis=0), name=f"centres_{classes}")
        self.scale, self.margin, self.classes = scale, margin, classes
        self.pair_weight, self.pair_margin = pair_weight, pair_margin

    def loss(self, embeddings, labels):
        import tensorflow as tf
        e = tf.math.l2_normalize(embeddings, axis=1)
        w = tf.math.l2_normalize(self.weights, axis=0)
        cos = tf.matmul(e, w)
        onehot = tf.one_hot(labels, self.classes)
        logits = self.scale * (cos - self.margin * onehot)
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
        if self.pair_weight:
            loss += self.pair_weight * batch_hard(e, labels, self.pair_margin)
        return loss


def batch_hard(e, labels, margin: float):
    """Batch-hard triplet loss on cosines of unit vectors ``e``: for each sample, its least similar same-class
    sample against its most similar other-class one, by ``margin``. It works on the pairs the unit confuses
    (the class centres of CosFace see every class, but only through their centres)."""
    import tensorflow as tf
    cos = tf.matmul(e, e, transpose_b=True)
    same = tf.equal(labels[:, None], labels[None, :])
    eye = tf.eye(tf.shape(e)[0], dtype=tf.bool)
    positive = tf.reduce_min(tf.where(same & ~eye, cos, 2.0 * tf.ones_like(cos)), axis=1)
    negative = tf.reduce_max(tf.where(same, -2.0 * tf.ones_like(cos), cos), axis=1)
    has_positive = tf.reduce_any(same & ~eye, axis=1)
    losses = tf.nn.relu(negative - positive + margin)
    return tf.reduce_sum(tf.where(has_positive, losses, 0.0)) / tf.maximum(
        tf.reduce_sum(tf.cast(has_positive, tf.float32)), 1.0)


class Trainer:
    """Phases of (model, head) training with Adam and a cosine learning rate; resumable from an .npz checkpoint.

    The checkpoint holds the step, the model's, the heads' and both optimizers' variables, so a run killed
    at any point continues where its last checkpoint left it, with the same data order (batches are drawn
    from a generator seeded by the step).
    """

    def __init__(self, model, heads: list[CosFaceHead], steps: list[int], lr: float, checkpoint: Path,
                 weight_decay: float = 0.0):
        import tensorflow as tf
        from tensorflow import keras
        self.model, self.heads, self.steps, self.lr = model, heads, steps, lr
        self.checkpoint = Path(checkpoint)
        # AdamW: decoupled weight decay keeps the weights small, the regulariser a 300-class set needs
        self.optimizers = [keras.optimizers.AdamW(lr, weight_decay=weight_decay) if weight_decay
                           else keras.optimizers.Adam(lr) for _ in heads]
        for opt, head in zip(self.optimizers, heads):
            opt.build(model.trainable_variables + [head.weights])
        self.step = 0
        self._train = [self._make_step(opt, head) for opt, head in zip(self.optimizers, heads)]
        self._tf = tf

    def _make_step(self, opt, head):
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = head.loss(self.model(x, training=True), y)
            variables = self.model.trainable_variables + [head.weights]
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        return train_step

    def _state(self) -> list:
        out = [v for v in self.model.variables] + [h.weights for h in self.heads]
        for opt in self.optimizers:
            out += list(opt.variables)
        return out

    def save(self) -> None:
        tmp = self.checkpoint.with_suffix(".tmp.npz")
        np.savez(tmp, step=self.step, *[v.numpy() for v in self._state()])
        tmp.replace(self.checkpoint)

    def restore(self) -> bool:
        if not self.checkpoint.is_file():
            return False
        data = np.load(self.checkpoint)
        state = self._state()
        shapes = [tuple(data[f"arr_{i}"].shape) for i in range(len(data.files) - 1)]
        if shapes != [tuple(v.shape) for v in state]:
            raise SystemExit(f"{self.checkpoint}: made by another network or data setup (its variables differ); "
                             "use another --work folder or the same arguments")
        arrays = [data[f"arr_{i}"] for i in range(len(state))]
        for var, value in zip(state, arrays):
            var.assign(value)
        self.step = int(data["step"])
        return True

    def start_from(self, checkpoint: Path) -> None:
        """Take the network's weights from another run's checkpoint and skip phase 1 (a shared pretraining:
        several phase-2 variants start from one pretrained network). Heads and optimizers start fresh."""
        data = np.load(checkpoint)
        weights = [data[f"arr_{i}"] for i in range(len(self.model.variables))]
        if [w.shape for w in weights] != [tuple(v.shape) for v in self.model.variables]:
            raise SystemExit(f"{checkpoint}: made by another network (its variables differ)")
        for var, value in zip(self.model.variables, weights):
            var.assign(value)
        self.step = self.steps[0]

    def phase_of(self, step: int) -> tuple[int, int, int]:
        """(phase, step within it, phase length) of a global step."""
        start = 0
        for phase, length in enumerate(self.steps):
            if step < start + length:
                return phase, step - start, length
            start += length
        return len(self.steps), 0, 0

    def run(self, batches, every: int = 100, progress=None, evaluate=None, evaluate_every: int = 500) -> list[dict]:
        """Train until every phase is done; ``batches(phase, step)`` gives (x, labels). Returns the loss log.

        ``evaluate()`` (a dict, e.g. error rates on calibration palms) is logged every ``evaluate_every`` steps
        and at the end; each such state is also kept as ``<checkpoint>-<step>.npz`` so that a variant can be
        chosen on those figures."""
        total = sum(self.steps)
        log = []
        bar = progress(total=total, initial=self.step, desc="train") if progress else None
        started, losses = time.time(), []
        while self.step < total:
            phase, within, length = self.phase_of(self.step)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * within / length))
            self.optimizers[phase].learning_rate.assign(max(lr, self.lr * 0.01))
            x, y = batches(phase, self.step)
            losses.append(float(self._train[phase](self._tf.constant(x), self._tf.constant(y))))
            self.step += 1
            if bar:
                bar.update(1)
                bar.set_postfix(phase=phase, loss=f"{losses[-1]:.2f}")
            if self.step % every == 0 or self.step == total:
                log.append({"step": self.step, "phase": phase, "loss": round(float(np.mean(losses)), 3),
                            "seconds": round(time.time() - started, 1)})
                losses = []
                self.save()
                if evaluate and (self.step % evaluate_every == 0 or self.step == total):
                    log[-1]["calibration"] = evaluate()
                    print(f"step {self.step} calibration palms: {log[-1]['calibration']}", flush=True)
                    np.savez(self.checkpoint.with_name(f"{self.checkpoint.stem}-{self.step}.npz"),
                             step=self.step, *[v.numpy() for v in self.model.variables])
        if bar:
            bar.close()
        return log


def export_int8(model, representative: np.ndarray) -> bytes:
    """Full-integer int8 TFLite (int8 input and output) calibrated on representative uint8 ROIs."""
    import tensorflow as tf

    import tempfile

    def data():
        for roi in representative:
            yield [to_input(roi[None])]

    with tempfile.TemporaryDirectory() as tmp:  # a SavedModel freezes the variables (a concrete function would not)
        model.export(tmp, format="tf_saved_model", input_signature=[tf.TensorSpec([1, SIZE, SIZE, 1], tf.float32)],
                     verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return int8_convert(converter, data)


def int8_convert(converter, data) -> bytes:
    """Full-integer int8 (int8 in and out) with a representative dataset: the unit runs nothing else."""
    import tensorflow as tf
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = data
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()
