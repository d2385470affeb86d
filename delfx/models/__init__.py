"""Model files that ship with delfx (PCA projections). See docs/MODELS.md for their origin."""
