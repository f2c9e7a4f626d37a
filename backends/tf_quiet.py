"""TensorFlow and Keras, imported without their start-up chatter.

TensorFlow's C++ runtime writes notices straight to the process's standard error while it
loads ("All log messages before absl::InitializeLog() ...", the oneDNN notice), where
``TF_CPP_MIN_LOG_LEVEL`` does not reach them. They are caught at the file descriptor
during the import, and everything else that was written then (a real warning) is passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO and WARNING lines
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|Could not find cuda drivers on your machine"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|Created TensorFlow Lite XNNPACK delegate for CPU"
)


@contextmanager
def chatter_filtered() -> Iterator[None]:
    """Standard error, at the descriptor, with ``NOISE`` lines dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not NOISE.search(line):
                    sys.stderr.write(line)


with chatter_filtered():
    import keras
    import tensorflow as tf

__all__ = ["NOISE", "chatter_filtered", "keras", "tf"]
