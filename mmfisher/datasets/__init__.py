"""Data sets for label-free pruning: plain image files without annotations."""
from .unlabeled import IMG_EXTENSIONS, UnlabeledImages, list_images

__all__ = ['UnlabeledImages', 'IMG_EXTENSIONS', 'list_images']
