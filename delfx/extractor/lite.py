"""`--precision int8`: the built-in DELF network through LiteRT with dynamic-range int8 weights.

TensorFlow's own int8 ops do not reach this CPU's VNNI units; LiteRT's XNNPACK kernels do
(benchmarks/bench_roofline.py: the VGG16 backbone 3.6x faster than TensorFlow fp32 at feature
cosine 0.999). The network (pixel normalisation, backbone, attention or norm score) is converted
once per process with every dimension but the channels left free, weights quantised to int8 and
activations quantised on the fly (dynamic range: no calibration set, so nothing to tune on);
one interpreter per input shape is kept, since resizing an interpreter reallocates it.

Fidelity is checked before any output exists: `Int8Network` runs the fp32 network and the int8
one on a probe photo (scikit-image's astronaut, at 256 px) and compares the features of the cells
keypoint selection would keep (top 10% by score). Below FIDELITY_REFUSE median cosine the model
is refused; below FIDELITY_WARN it warns (both before any output exists); the figures are logged
and kept in `Int8Network.fidelity` (benchmarks record them).

The runtime is `ai_edge_litert` (LiteRT, TFLite's successor) when installed, else
`tf.lite.Interpreter`; the converter is TensorFlow's (LiteRT has none of its own).
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any

import numpy as np

from delfx.errors import DelfxError

log = logging.getLogger(__name__)

FIDELITY_WARN = 0.995
FIDELITY_REFUSE = 0.98
PROBE_SIDE = 256
MAX_INTERPRETERS = 16  # input shapes kept allocated (a pyramid of 7 levels x a few batch sizes)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:  # pragma: no cover - depends on the install
        from delfx.tf_quiet import import_tensorflow
        return import_tensorflow().lite.Interpreter, "tf.lite"


def convert_dynamic_int8(network) -> bytes:
    """A flatbuffer of `network` (DelfNetwork: images in [0, 1] -> (features, scores)) with
    int8 weights and free batch, height and width."""
    from delfx.tf_quiet import import_tensorflow
    tf = import_tensorflow()
    fn = tf.function(lambda images01: network(images01),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights
    from delfx.tf_quiet import native_output_quiet
    try:
        with native_output_quiet("litert converter"):
            return converter.convert()
    except Exception as exc:  # the converter raises many types; one line for the user
        raise DelfxError(f"--precision int8: converting the {network.spec.name} network to "
                         f"LiteRT failed: {type(exc).__name__}: {str(exc)[:200]}") from None


class Int8Network:
    """Callable like DelfNetwork on numpy images in [0, 1]: (features, scores) as numpy.

    Args:
        network: the fp32 DelfNetwork to quantise (kept for the fidelity probe only).
        threads: LiteRT threads (default: the CPUs this process may use).
    """

    def __init__(self, network, threads: int | None = None):
        if network.precision != "float32":
            raise DelfxError("int8 is converted from the float32 network")
        self.spec = network.spec
        self.receptive_field = network.receptive_field
        self.score_mode = network.score_mode
        self._model = convert_dynamic_int8(network)
        self._interpreter_class, self.runtime = _interpreter_class()
        self._threads = threads or len(os.sched_getaffinity(0))
        self._interpreters: collections.OrderedDict = collections.OrderedDict()
        self.fidelity = self._probe(network)

    def _interpreter(self, shape: tuple[int, ...]):
        interpreter = self._interpreters.get(shape)
        if interpreter is None:
            from delfx.tf_quiet import native_output_quiet
            with native_output_quiet("litert"):  # "Created TensorFlow Lite XNNPACK delegate"
                interpreter = self._interpreter_class(model_content=self._model,
                                                      num_threads=self._threads)
                index = interpreter.get_input_details()[0]["index"]
                interpreter.resize_tensor_input(index, list(shape))
                interpreter.allocate_tensors()
            self._interpreters[shape] = interpreter
            if len(self._interpreters) > MAX_INTERPRETERS:
                self._interpreters.popitem(last=False)
        else:
            self._interpreters.move_to_end(shape)
        return interpreter

    def __call__(self, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images01 = np.ascontiguousarray(images01, dtype=np.float32)
        interpreter = self._interpreter(images01.shape)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images01)
        interpreter.invoke()
        outputs = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
        # output order is the converter's: tell them apart by rank
        features = next(o for o in outputs if o.ndim == 4)
        scores = next(o for o in outputs if o.ndim == 3)
        return features.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)

    def _probe(self, network) -> dict[str, Any]:
        """Median cosine int8 vs fp32 over the cells selection keeps; refuse or warn."""
        import cv2
        from skimage import data as skdata
        image = cv2.resize(skdata.astronaut(), (PROBE_SIDE, PROBE_SIDE),
                           interpolation=cv2.INTER_AREA).astype(np.float32)[None] / 255.0
        ref_features, ref_scores = (t.numpy() for t in network(image))
        features, scores = self(image)
        a = ref_features.reshape(-1, ref_features.shape[-1])
        b = features.reshape(-1, ref_features.shape[-1])
        strong = ref_scores.reshape(-1) >= np.percentile(ref_scores, 90)
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                                       + 1e-12)
        fidelity = {"probe": f"astronaut {PROBE_SIDE}x{PROBE_SIDE}",
                    "median_cosine_kept_cells": round(float(np.median(cos[strong])), 5),
                    "score_correlation": round(float(np.corrcoef(ref_scores.ravel(),
                                                                 scores.ravel())[0, 1]), 5),
                    "runtime": self.runtime}
        value = fidelity["median_cosine_kept_cells"]
        if value < FIDELITY_REFUSE:
            raise DelfxError(f"--precision int8 changes the {self.spec.name} features too much "
                             f"(median cosine {value:.3f} to float32 < {FIDELITY_REFUSE}): use "
                             f"float32 or bfloat16")
        if value < FIDELITY_WARN:
            log.warning("--precision int8: %s features at median cosine %.4f to float32 (< %s)",
                        self.spec.name, value, FIDELITY_WARN)
        log.info("int8 %s via %s: median cosine %.4f to float32 on the probe", self.spec.name,
                 self.runtime, value)
        return fidelity


def build_network(backbone: str, weights, attention_weights, precision: str):
    """(DelfNetwork, Int8Network or None) for a precision: float32/bfloat16 run the Keras network
    itself; int8 runs LiteRT converted from (and checked against) its float32 build."""
    from delfx.extractor.delf_net import DelfNetwork
    int8 = precision == "int8"
    network = DelfNetwork(backbone, weights, attention_weights, "float32" if int8 else precision)
    return network, (Int8Network(network) if int8 else None)
