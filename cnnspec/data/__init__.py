"""Image data from files: sources that list samples without decoding them, and the one
object that turns a file's bytes into the network's input (``Transform``).

A source (class folders, a CSV or JSON Lines manifest, WebDataset-style tar shards) is a
``Listing`` of ``Sample`` locators and class names. ``Transform.from_file`` decodes one
sample for training, evaluation and prediction alike, so the three never disagree about
an image. No framework is imported here; Pillow is imported when an image is decoded.
"""

from cnnspec.data.decode import BadImage, decode
from cnnspec.data.sources import IMAGE_SUFFIXES, Listing, Sample, list_source
from cnnspec.data.transforms import Transform

__all__ = ["IMAGE_SUFFIXES", "BadImage", "Listing", "Sample", "Transform", "decode", "list_source"]
