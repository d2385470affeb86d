"""Multi-scale DELF extraction: image pyramid, keypoint locations, selection, post-processing.

For each pyramid scale s the image is resized bilinearly (as DELF does) to round(H*s) x
round(W*s) and run through the network. Every feature cell becomes a keypoint at the centre of
its receptive field (see receptive_field.py), mapped back to the input image with half-pixel
alignment: y = (y_level + 0.5) * H / h_level - 0.5. (DELF's own code divides by s, which differs
by under (0.5 / s) px; using the real level size also absorbs the rounding of h_level.)
Centres that fall past the last pixel (border cells of a ceil-sized feature map) are clipped
into the image. Its scale is 1 / s. Selection keeps cells with score >= threshold, then the global top
`max_features` by score across all scales (ties: lower level, then row-major, first). Finally
the descriptors are post-processed: L2-normalise -> minus PCA mean -> project -> optional
whitening -> L2-normalise.

Two implementations share these rules: numpy (`select_features`, used in-process, where images
of one size are batched per level) and TensorFlow (`tf_pyramid_extract`, the body of the
exported SavedModel signature). tests/extractor/test_delf.py checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from delfx.nets.receptive_field import ReceptiveField


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Pyramid level size: floor(side * scale + 0.5) in float32, exactly as the TF graph does."""
    s = np.float32(scale)
    return (max(1, int(np.floor(np.float32(height) * s + np.float32(0.5)))),
            max(1, int(np.floor(np.float32(width) * s + np.float32(0.5)))))


@dataclass
class LevelOutput:
    """Network output at one pyramid level for one image."""

    scale: float
    level_height: int
    level_width: int
    features: np.ndarray  # (h, w, C)
    scores: np.ndarray    # (h, w)


def select_features(levels: list[LevelOutput], image_height: int, image_width: int,
                    rf: ReceptiveField, score_threshold: float, max_features: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints of all levels, thresholded and cut to the global top `max_features`.

    Returns:
        locations (N, 2) (y, x) in input-image pixels, raw descriptors (N, C), scales (N,),
        scores (N,), ordered by descending score.
    """
    locations, descriptors, scales, scores = [], [], [], []
    for level in levels:
        h, w = level.scores.shape
        keep = level.scores.reshape(-1) >= score_threshold
        if not keep.any():
            continue
        centres = rf.centres(h, w)[keep]
        centres[:, 0] = (centres[:, 0] + 0.5) * image_height / level.level_height - 0.5
        centres[:, 1] = (centres[:, 1] + 0.5) * image_width / level.level_width - 0.5
        # Cells of a ceil-sized map can be centred past the last pixel: clip into the image.
        np.clip(centres[:, 0], 0, image_height - 1, out=centres[:, 0])
        np.clip(centres[:, 1], 0, image_width - 1, out=centres[:, 1])
        locations.append(centres)
        descriptors.append(level.features.reshape(h * w, -1)[keep])
        scores.append(level.scores.reshape(-1)[keep])
        scales.append(np.full(int(keep.sum()), 1.0 / level.scale))
    if not scores:
        channels = levels[0].features.shape[-1] if levels else 0
        return (np.zeros((0, 2), np.float32), np.zeros((0, channels), np.float32),
                np.zeros(0, np.float32), np.zeros(0, np.float32))
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")[:max_features]
    return (np.concatenate(locations)[order].astype(np.float32),
            np.concatenate(descriptors)[order].astype(np.float32),
            np.concatenate(scales)[order].astype(np.float32), all_scores[order].astype(np.float32))


def tf_postprocess(descriptors, pca_mean, pca_components, pca_scale):
    """TensorFlow twin of PCAProjection.apply (pca_scale: 1/sqrt(var+eps) or ones)."""
    import tensorflow as tf
    x = tf.math.l2_normalize(descriptors, axis=1, epsilon=1e-12)
    x = tf.matmul(x - pca_mean[None, :], pca_components, transpose_b=True) * pca_scale[None, :]
    return tf.math.l2_normalize(x, axis=1, epsilon=1e-12)


def tf_pyramid_extract(network, rf: ReceptiveField, image, score_threshold, image_scales,
                       max_feature_num, min_level_side: int):
    """The whole DELF extraction of one image in TensorFlow ops (for the exported signature).

    Args:
        network: callable (B, H, W, 3) in [0, 1] -> (features (B,h,w,C), scores (B,h,w)).
        image: float32 (H, W, 3) in [0, 1].
    Returns:
        locations (N, 2), raw descriptors (N, C), scales (N,), scores (N,), by descending score.
    """
    import tensorflow as tf
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    n_scales = tf.shape(image_scales)[0]
    loc_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
    desc_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
    scale_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
    score_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
    written = tf.constant(0)
    i = tf.constant(0)

    def body(i, written, loc_ta, desc_ta, scale_ta, score_ta):
        s = image_scales[i]
        # floor(x + 0.5) in float32: the same rounding as level_size on the numpy side
        h = tf.maximum(1, tf.cast(tf.floor(height * s + 0.5), tf.int32))
        w = tf.maximum(1, tf.cast(tf.floor(width * s + 0.5), tf.int32))
        fits = tf.minimum(h, w) >= min_level_side

        def run_level():
            resized = tf.image.resize(image[None], tf.stack([h, w]), method="bilinear")
            features, scores = network(resized)
            features, scores = features[0], scores[0]
            fh, fw = tf.shape(scores)[0], tf.shape(scores)[1]
            ys = rf.stride * tf.range(fh, dtype=tf.float32) + rf.first_centre
            xs = rf.stride * tf.range(fw, dtype=tf.float32) + rf.first_centre
            ys = tf.clip_by_value((ys + 0.5) * height / tf.cast(h, tf.float32) - 0.5, 0.0, height - 1)
            xs = tf.clip_by_value((xs + 0.5) * width / tf.cast(w, tf.float32) - 0.5, 0.0, width - 1)
            grid_y, grid_x = tf.meshgrid(ys, xs, indexing="ij")
            locations = tf.reshape(tf.stack([grid_y, grid_x], axis=-1), [-1, 2])
            flat_scores = tf.reshape(scores, [-1])
            keep = flat_scores >= score_threshold
            descs = tf.reshape(features, [fh * fw, tf.shape(features)[-1]])
            kept = tf.boolean_mask(flat_scores, keep)
            return (tf.boolean_mask(locations, keep), tf.boolean_mask(descs, keep),
                    tf.fill(tf.shape(kept), 1.0 / s), kept)

        def skip_level():
            c = network.spec.channels
            return (tf.zeros((0, 2)), tf.zeros((0, c)), tf.zeros((0,)), tf.zeros((0,)))

        loc, desc, sc, score = tf.cond(fits, run_level, skip_level)
        return (i + 1, written + 1, loc_ta.write(written, loc), desc_ta.write(written, desc),
                scale_ta.write(written, sc), score_ta.write(written, score))

    _, _, loc_ta, desc_ta, scale_ta, score_ta = tf.while_loop(
        lambda i, *_: i < n_scales, body, (i, written, loc_ta, desc_ta, scale_ta, score_ta))
    locations, descriptors = loc_ta.concat(), desc_ta.concat()
    scales, scores = scale_ta.concat(), score_ta.concat()
    k = tf.minimum(max_feature_num, tf.shape(scores)[0])
    # top_k keeps the lower index first among equal values, like numpy's stable argsort.
    _, order = tf.math.top_k(scores, k=k, sorted=True)
    return (tf.gather(locations, order), tf.gather(descriptors, order), tf.gather(scales, order),
            tf.gather(scores, order))
