"""mergeflow: a reproducible pipeline for training-free model merging of CLIP encoders."""

from mergeflow.errors import MergeflowError

__version__ = "0.1.0"
__all__ = ["MergeflowError", "__version__"]
