"""Import the Keras applications (built offline, ``weights=None``, then every weight drawn
at random): run by hand (`make bench`).

For each of keras.applications' CNNs, saved as ``.keras`` and loaded back as a user's file
would be, prints whether `cnnspec import` reads it (or the layer it refuses), the spec's
parameters (learned plus running statistics) against Keras' ``count_params()``, the
NumPy backend's output against Keras' on the same 2 images (max relative error; goal
1e-4; logits, the classifier's softmax left off), and the import's seconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_import_keras import randomised

import cnnspec
from cnnspec.backends import keras_import, numpy_backend
from cnnspec.backends.import_common import ImportRefused
from cnnspec.backends.tf_quiet import keras
from cnnspec.spec.training import TrainConfig

APPLICATIONS = {  # name: (builder, image size)
    "VGG16": ("VGG16", 224), "ResNet50": ("ResNet50", 224), "ResNet50V2": ("ResNet50V2", 224),
    "InceptionV3": ("InceptionV3", 299), "Xception": ("Xception", 299), "DenseNet121": ("DenseNet121", 224),
    "MobileNet": ("MobileNet", 224), "MobileNetV2": ("MobileNetV2", 224), "EfficientNetB0": ("EfficientNetB0", 224),
    "MobileNetV3Small": ("MobileNetV3Small", 224), "MobileNetV3Large": ("MobileNetV3Large", 224),
    "EfficientNetV2B0": ("EfficientNetV2B0", 224), "ConvNeXtTiny": ("ConvNeXtTiny", 224),
}


def main() -> None:
    only = sys.argv[1:] or list(APPLICATIONS)
    print(f"{'model':17} {'imports':8} {'spec params':>12} {'keras params':>12} {'max rel err':>11} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            builder, size = APPLICATIONS[name]
            source = randomised(getattr(keras.applications, builder)(weights=None, input_shape=(size, size, 3), classifier_activation=None))
            path = Path(tmp) / f"{name}.keras"
            source.save(path)
            start = time.perf_counter()
            try:
                loaded = keras_import.load(path)
                imported = keras_import.import_keras(loaded, name.lower())
            except ImportRefused as exc:
                print(f"{name:17} {'no':8} {str(exc)[:110]}")
                continue
            seconds = time.perf_counter() - start
            graph = cnnspec.parse_spec(imported.text, f"{name}.yaml")
            session = numpy_backend.open_session(graph, TrainConfig())
            session.set_weights(imported.weights)
            x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
            ours, theirs = session.predict(x), keras_import.predict(loaded, imported, x)
            error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            print(f"{name:17} {'yes':8} {graph.params + graph.non_trainable:12,} {source.count_params():12,} {error:11.1e} {seconds:8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
