"""Building blocks shared by every trained network of delfx: CNN backbones and their receptive
fields, the bottleneck head and its config base, and the Keras training helpers.

Below the stages that use them (DELF extraction and its attention training, the GeM global
models, the bottleneck classifier), so none of those imports another sideways. Importing these
modules is cheap: TensorFlow and Keras load inside the functions that build networks.
"""
