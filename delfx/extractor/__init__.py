"""Image decoding and DELF feature extraction."""
