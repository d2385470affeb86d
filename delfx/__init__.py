"""delfx: offline DELF feature extraction, indexing and landmark recognition at scale."""

__version__ = "0.1.0"
