"""Image data from files: sources that list samples without decoding them, and the one
function that turns a file's bytes into the network's input (``prepare``).

A source (class folders, a CSV or JSON Lines manifest, WebDataset-style tar shards) is a
``Listing`` of ``Sample`` locators and class names. ``prepare`` decodes one sample for
training, evaluation and prediction alike, so the three never disagree about an image.
No framework is imported here; Pillow is imported when an image is decoded.
"""

from cnnspec.data.decode import BadImage, decode, prepare
from cnnspec.data.sources import IMAGE_SUFFIXES, Listing, Sample, list_source

__all__ = ["IMAGE_SUFFIXES", "BadImage", "Listing", "Sample", "decode", "list_source", "prepare"]
