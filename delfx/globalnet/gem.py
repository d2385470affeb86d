"""Generalised-mean (GeM) pooling (Radenović, Tolias & Chum, TPAMI 2018) and its Keras layers.

    GeM(X)_c = ( mean_{h,w} max(X_hwc, eps)^p_c )^(1 / p_c)

p = 1 is average pooling, p -> inf max pooling; p is learnt (one global p, or one per channel).
`gem` is the pure numpy definition the tests hold the layer to. The layers are registered Keras
serialisables (package "delfx"), so a model that uses them saves as `.keras` and loads with
Keras' safe_mode: no Lambda, no pickled code.
"""

from __future__ import annotations

import functools

import numpy as np

# p is clamped to >= 1 in the forward pass: below 1 the "mean" is no longer between average and
# max pooling, and x^p of near-zero activations explodes the gradient.
MIN_P = 1.0


def gem(features: np.ndarray, p: float | np.ndarray = 3.0, eps: float = 1e-6) -> np.ndarray:
    """GeM over the spatial axes of (B, H, W, C) features -> (B, C) (numpy reference)."""
    x = np.maximum(np.asarray(features, dtype=np.float64), eps)
    p = np.maximum(np.asarray(p, dtype=np.float64), MIN_P)
    return np.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


@functools.cache
def keras_layers() -> dict[str, type]:
    """The layer classes, created (and registered with Keras) on first use.

    Deferred so that importing this module does not import TensorFlow.
    """
    from delfx.tf_quiet import import_tensorflow
    import_tensorflow()
    import keras
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="delfx")
    class GeM(keras.layers.Layer):
        """GeM pooling of a (B, H, W, C) feature map to (B, C), learnable exponent.

        Args:
            p: initial exponent (3, as Radenović et al.).
            per_channel: one p per channel instead of one global p.
            eps: activations are clamped to at least this before the power.
            train_p: whether p is learnt.
        """

        def __init__(self, p: float = 3.0, per_channel: bool = False, eps: float = 1e-6,
                     train_p: bool = True, **kwargs):
            super().__init__(**kwargs)
            self.p_init, self.per_channel, self.eps, self.train_p = (
                float(p), bool(per_channel), float(eps), bool(train_p))

        def build(self, input_shape):
            shape = (int(input_shape[-1]),) if self.per_channel else (1,)
            self.p = self.add_weight(name="p", shape=shape, dtype="float32",
                                     initializer=keras.initializers.Constant(self.p_init),
                                     trainable=self.train_p)

        def call(self, x):
            # float32 whatever the compute policy: bf16 powers lose the small activations.
            x = ops.maximum(ops.cast(x, "float32"), self.eps)
            p = ops.maximum(self.p, MIN_P)
            return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "p": self.p_init, "per_channel": self.per_channel,
                    "eps": self.eps, "train_p": self.train_p}

    @keras.saving.register_keras_serializable(package="delfx")
    class L2Normalize(keras.layers.Layer):
        """x / max(||x||_2, 1e-12) along the last axis."""

        def call(self, x):
            return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-12)

        def compute_output_shape(self, input_shape):
            return input_shape

    @keras.saving.register_keras_serializable(package="delfx")
    class CaffeInput(keras.layers.Layer):
        """RGB in [0, 1] -> what Caffe-trained backbones expect: 0..255 BGR minus channel means.

        Inside the model (not in the input pipeline) so that VGG16 and ResNet50, trained with
        different means, can share one input in the concatenated model.
        """

        def __init__(self, bgr_mean=(0.0, 0.0, 0.0), **kwargs):
            super().__init__(**kwargs)
            self.bgr_mean = tuple(float(v) for v in bgr_mean)

        def call(self, x):
            bgr = ops.flip(ops.cast(x, self.compute_dtype), axis=-1) * 255.0
            return bgr - ops.convert_to_tensor(self.bgr_mean, dtype=self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "bgr_mean": list(self.bgr_mean)}

    return {"GeM": GeM, "L2Normalize": L2Normalize, "CaffeInput": CaffeInput}
