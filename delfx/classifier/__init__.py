"""The bottleneck landmark classifier trained on a feature set (`delfx train`).

Each image is represented by its top-`max_features` local descriptors (by attention score, padded
with a mask) and classified by a small Keras network: the 150 x D bottleneck head of the
reference GLR2019 design (`flatten`) or an order-invariant pooling variant (`pool`).

Modules (imported explicitly; this package imports nothing heavy on its own):

* `delfx.classifier.data`   the labelled images of a feature set, split, as padded inputs (in
                            memory or streamed from the shards)
* `delfx.classifier.model`  `ClassifierConfig`, the Keras model builder, save/load of a
                            classifier directory (`load_classifier`)
* `delfx.classifier.train`  `train_classifier`: the training run and its artifacts

Using a classifier to answer queries is recognition's job (delfx.recognition).
"""
