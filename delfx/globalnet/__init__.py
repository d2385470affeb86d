"""Global image models: GeM-pooled CNNs as landmark classifiers and as image descriptors.

The seed study's global systems (Radenović et al.'s generalised-mean pooling on a fully
convolutional backbone, then the bottleneck head): `gem-vgg16`, `gem-resnet50` and `concat`
(VGG16 ⊕ ResNet50 GeM vectors). The L2-normalised GeM vector is also stored per image in the
feature shards (schema v2) and used as the first-stage retrieval shortlist.

* `delfx.globalnet.gem`    the GeM pooling function and the Keras layers (registered, no pickle)
* `delfx.globalnet.model`  `GlobalConfig`, the network builder, save/load of a model directory,
                           `GlobalModel` (embed images, classify descriptors)
* `delfx.globalnet.train`  `train_global_model`: image-level training with random crops

Extraction stores the vectors through `delfx.extractor.with_global.WithGlobal`.
"""
