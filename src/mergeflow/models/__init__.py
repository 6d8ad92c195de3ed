"""Models: the open_clip factory (real and tiny architectures), zero-shot heads, the classifier."""

from mergeflow.models.classifier import ImageClassifier, normalize_images
from mergeflow.models.factory import create_model, image_size, load_base, load_visual_state, save_base

__all__ = ["ImageClassifier", "create_model", "image_size", "load_base", "load_visual_state", "normalize_images",
           "save_base"]
