"""The TensorFlow backend: a session over the Keras model that ``tensorflow_lowering`` builds
(devices, memory, training with PyTorch's losses and optimizers and their state names, so
checkpoints and optimizer state move between all three backends), and the export artifacts
(SavedModel, .keras, TFLite)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import BackendError
from cnnspec.backends.tensorflow_lowering import LOWERINGS as LOWERINGS  # re-exported: the backend module is its front
from cnnspec.backends.tensorflow_lowering import Array, KerasNetwork
from cnnspec.backends.tensorflow_lowering import build as build
from cnnspec.backends.tf_quiet import chatter_filtered, keras, tf
from cnnspec.graph.dag import Graph
from cnnspec.graph.tuning import frozen_norm_layers, multipliers
from cnnspec.spec.training import OptimizerConfig, TrainConfig


def _cross_entropy(smoothing: float) -> Callable[[Any, Any], Any]:
    def loss(outputs: Any, targets: Any) -> Any:  # (N, K), (N,) -> mean
        if not smoothing:
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, outputs))
        classes = tf.shape(outputs)[1]
        target = tf.one_hot(targets, classes) * (1 - smoothing) + smoothing / tf.cast(classes, outputs.dtype)
        return -tf.reduce_mean(tf.reduce_sum(target * tf.nn.log_softmax(outputs), axis=1))

    return loss


def _mse(outputs: Any, targets: Any) -> Any:
    return tf.reduce_mean(tf.square(outputs - tf.one_hot(targets, tf.shape(outputs)[1])))


def _multi_margin(outputs: Any, targets: Any) -> Any:
    """PyTorch's MultiMarginLoss (p=1, margin=1): sum_i!=y max(0, 1 - x_y + x_i) / classes."""
    correct = tf.gather(outputs, targets, axis=1, batch_dims=1)[:, None]
    others = 1.0 - tf.one_hot(targets, tf.shape(outputs)[1])
    return tf.reduce_mean(tf.reduce_mean(tf.nn.relu(1.0 - correct + outputs) * others, axis=1))


LOSSES: dict[str, Callable[[TrainConfig], Callable[[Any, Any], Any]]] = {
    "cross_entropy": lambda c: _cross_entropy(c.label_smoothing),
    "mse": lambda c: _mse,
    "hinge": lambda c: _multi_margin,
}


SLOTS: dict[str, Callable[[OptimizerConfig], tuple[str, ...]]] = {
    "sgd": lambda c: ("momentum_buffer",) if c.momentum else (),
    "adagrad": lambda c: ("sum",),
    "rmsprop": lambda c: ("square_avg", "momentum_buffer") if c.momentum else ("square_avg",),
    "adadelta": lambda c: ("square_avg", "acc_delta"),
    "adam": lambda c: ("exp_avg", "exp_avg_sq"),
    "adamw": lambda c: ("exp_avg", "exp_avg_sq"),
}


class TorchOptimizer:
    """torch.optim's single-tensor updates on Keras-layout variables, with its state
    names; zero-initialised slots give the same first step as PyTorch's lazy ones."""

    def __init__(self, config: OptimizerConfig, variables: dict[str, Any], multipliers: dict[str, tuple[float, float]] | None = None) -> None:
        self.config, self.variables = config, variables
        self.multipliers = multipliers or {}  # (lr, weight decay) multipliers by name
        self.lr = tf.Variable(config.lr, trainable=False, dtype=tf.float32, name="lr")
        self.step = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="step")
        self.slots = {
            name: {slot: tf.Variable(tf.zeros_like(v), trainable=False, name=f"{slot}") for slot in SLOTS[config.name](config)}
            for name, v in variables.items()
        }

    def apply(self, grads: list[Any]) -> None:  # traced inside the training step
        c = self.config
        step = self.step.assign_add(1.0)
        for (name, p), g in zip(self.variables.items(), grads, strict=True):
            s = self.slots[name]
            lr_mult, decay_mult = self.multipliers.get(name, (1.0, 1.0))
            lr, weight_decay = self.lr * lr_mult if lr_mult != 1.0 else self.lr, c.weight_decay * decay_mult
            if c.name == "adamw":
                p.assign(p * (1 - lr * weight_decay))
            elif weight_decay:
                g = g + weight_decay * p
            if c.name == "sgd":
                if c.momentum:
                    buffer = s["momentum_buffer"].assign(s["momentum_buffer"] * c.momentum + g)
                    g = g + c.momentum * buffer if c.nesterov else buffer
                p.assign_sub(lr * g)
            elif c.name == "adagrad":
                total = s["sum"].assign_add(g * g)
                p.assign_sub(lr * g / (tf.sqrt(total) + c.eps))
            elif c.name == "rmsprop":
                average = tf.sqrt(s["square_avg"].assign(s["square_avg"] * c.alpha + (1 - c.alpha) * g * g)) + c.eps
                if c.momentum:
                    p.assign_sub(lr * s["momentum_buffer"].assign(s["momentum_buffer"] * c.momentum + g / average))
                else:
                    p.assign_sub(lr * g / average)
            elif c.name == "adadelta":
                square = s["square_avg"].assign(s["square_avg"] * c.rho + (1 - c.rho) * g * g)
                delta = tf.sqrt(s["acc_delta"] + c.eps) / tf.sqrt(square + c.eps) * g
                s["acc_delta"].assign(s["acc_delta"] * c.rho + (1 - c.rho) * delta * delta)
                p.assign_sub(lr * delta)
            else:  # adam, adamw
                beta1, beta2 = c.betas
                m = s["exp_avg"].assign(s["exp_avg"] * beta1 + (1 - beta1) * g)
                v = s["exp_avg_sq"].assign(s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g)
                denominator = tf.sqrt(v) / tf.sqrt(1 - tf.pow(beta2, step)) + c.eps
                p.assign_sub(lr / (1 - tf.pow(beta1, step)) * m / denominator)


class DeviceError(BackendError):
    """The device asked for is not there; the message says what is."""


def _gpus() -> list[Any]:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # take GPU memory as needed, not all of it at start-up
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    return gpus


def resolve_device(device: str) -> tuple[str, str]:
    """(TensorFlow device string, cnnspec's name for it): the same names as torch's."""
    if device == "cpu":
        return "/CPU:0", "cpu"
    if device == "auto":
        return ("/GPU:0", "cuda:0") if _gpus() else ("/CPU:0", "cpu")
    if device == "cuda" or device.startswith("cuda:"):
        index_text = device.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")
        count = len(_gpus())
        if count == 0:
            raise DeviceError(f"device '{device}' asked for, but TensorFlow {tf.__version__} sees no GPU")
        index = int(index_text)
        if index >= count:
            raise DeviceError(f"device '{device}' asked for, but there are {count} GPU(s): cuda:0 .. cuda:{count - 1}")
        return f"/GPU:{index}", f"cuda:{index}"
    if device == "mps":
        raise DeviceError("device 'mps' asked for, but the tensorflow backend has no MPS (Apple GPU) support; use cpu")
    raise DeviceError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


class TensorFlowSession:
    """One network on one device with its optimizer: the harness's Session protocol."""

    def __init__(self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> None:
        if precision not in ("auto", "fp32"):
            raise BackendError(f"the tensorflow backend trains in fp32 only, not '{precision}': use --precision fp32, or --backend torch for bf16 and fp16")
        self._tf_device, self.device = resolve_device(device)
        self.precision = "fp32"
        self.config = config
        with tf.device(self._tf_device):
            self.network = KerasNetwork(graph, config.seed)
            scaled = multipliers(graph, config)
            variables = {name: self.network.bindings[name].variable for name in self.network.trainable if name in scaled}
            self.optimizer = TorchOptimizer(config.optimizer, variables, scaled)
        for name in frozen_norm_layers(graph, config):  # inference mode while training: running statistics stay
            self.network.model.get_layer(name).frozen = True
        self._variables = list(variables.values())
        self._loss = LOSSES[config.loss](config)
        spec = [tf.TensorSpec((None, *graph.input_shape), tf.float32), tf.TensorSpec((None,), tf.int64)]
        jit = True if compile else None
        self._train = tf.function(self._train_step, input_signature=spec, jit_compile=jit)
        self._evaluate = tf.function(self._evaluate_step, input_signature=spec, jit_compile=jit)
        self._predict = tf.function(lambda x: self.network.model(x, training=False), input_signature=spec[:1], jit_compile=jit)

    @property
    def model(self) -> keras.Model:
        return self.network.model

    def get_weights(self) -> dict[str, Array]:
        return self.network.get_weights()

    def set_weights(self, weights: dict[str, Array]) -> None:
        self.network.set_weights(weights)

    def _train_step(self, x: Any, y: Any) -> Any:  # (N, C, H, W), (N,) -> [summed loss, correct]
        with tf.GradientTape() as tape:
            outputs = self.network.model(x, training=True)
            loss = self._loss(outputs, y)
        grads = tape.gradient(loss, self._variables)
        clip = self.config.clip_grad_norm
        if clip is not None:  # torch.nn.utils.clip_grad_norm_
            scale = tf.minimum(clip / (tf.linalg.global_norm(grads) + 1e-6), 1.0)
            grads = [g * scale for g in grads]
        self.optimizer.apply(grads)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs, axis=1), y), tf.float32))
        return tf.stack([loss * tf.cast(tf.shape(x)[0], tf.float32), correct])

    def _evaluate_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        outputs = self.network.model(x, training=False)
        return self._loss(outputs, y) * tf.cast(tf.shape(x)[0], tf.float32), outputs

    def inputs(self, x: Array, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        """Raw pixels to the session's device as they are, normalised there in float32 (the
        operations of ``Normalization.apply``)."""
        with tf.device(self._tf_device):
            out = tf.cast(tf.convert_to_tensor(x), tf.float32) * tf.constant(scale, tf.float32)
            if len(x.shape) == 4:
                out = (out - tf.reshape(tf.constant(mean, tf.float32), (-1, 1, 1))) / tf.reshape(tf.constant(std, tf.float32), (-1, 1, 1))
            return out

    def train_step(self, x: Array, y: Array) -> tuple[float, int]:
        with tf.device(self._tf_device):
            loss_sum, correct = self._train(x, y).numpy()  # one device sync per step
        return float(loss_sum), int(correct)

    def evaluate(self, x: Array, y: Array) -> tuple[float, Array]:
        with tf.device(self._tf_device):
            loss, outputs = self._evaluate(x, y)
        return float(loss), outputs.numpy()

    def predict(self, x: Array) -> Array:
        with tf.device(self._tf_device):
            return self._predict(x).numpy()

    def activations(self, x: Array, layers: Collection[str] | None = None) -> dict[str, Array]:
        with tf.device(self._tf_device):
            values = self.network.activations(x)
        return values if layers is None else {name: value for name, value in values.items() if name in layers}

    def gradients(self, x: Array, direction: Array) -> tuple[dict[str, Array], dict[str, Array]]:
        with tf.device(self._tf_device):
            return self.network.gradients(x, direction)

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.lr.assign(lr)

    def optimizer_state(self) -> tuple[dict[str, Array], dict[str, Any]]:
        arrays: dict[str, Array] = {}
        step = np.asarray(self.optimizer.step.numpy(), np.float32)
        for name, slots in self.optimizer.slots.items():
            convert = self.network.bindings[name].from_keras
            for slot, variable in slots.items():
                arrays[f"{name}::{slot}"] = convert(variable.numpy())
            if self.config.optimizer.name != "sgd":
                arrays[f"{name}::step"] = step
        return arrays, {"param_groups": [{"lr": float(self.optimizer.lr.numpy())}], "step": float(step)}

    def load_optimizer_state(self, arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        steps = [float(np.asarray(a).reshape(-1)[0]) for key, a in arrays.items() if key.endswith("::step")]
        for key, array in arrays.items():
            name, slot = key.split("::")
            if slot == "step":
                continue
            if name not in self.optimizer.slots or slot not in self.optimizer.slots[name]:
                raise KeyError(f"optimizer state '{key}' does not belong to this model and optimizer")
            convert = self.network.bindings[name].to_keras
            self.optimizer.slots[name][slot].assign(np.ascontiguousarray(convert(np.asarray(array, np.float32))))
        self.optimizer.step.assign(max(steps, default=float(meta.get("step", 0.0))))
        if meta.get("param_groups"):
            self.optimizer.lr.assign(meta["param_groups"][0]["lr"])

    def available_memory(self) -> int | None:
        return None  # TensorFlow reports what it uses, not what is free


def open_session(graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> TensorFlowSession:
    return TensorFlowSession(graph, config, device, precision, compile)


def workspace_bytes(graph: Graph) -> int:
    return 0  # oneDNN and cuDNN convolve without keeping im2col columns


def available_memory(device: str) -> tuple[str, int | None]:
    """(resolved device, None): TensorFlow cannot say how much GPU memory is free."""
    return resolve_device(device)[1], None


class _KerasArtifact:
    def __init__(self, graph: Graph, weights: dict[str, Array], options: dict[str, Any]) -> None:
        _gpus()
        with tf.device("/CPU:0"):
            network = KerasNetwork(graph)
            network.set_weights(weights)
        self.model = network.model

    def run(self, x: Array) -> Array:
        return self.model(x, training=False).numpy()


class SavedModelArtifact(_KerasArtifact):
    """A TensorFlow SavedModel (a directory) serving N x C x H x W float32 -> outputs."""

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        import json

        self.model.export(str(path), format="tf_saved_model", verbose=False)
        (path / "cnnspec.json").write_text(json.dumps(metadata, indent=2) + "\n")


class KerasFileArtifact(_KerasArtifact):
    """A Keras 3 ``.keras`` file; its custom layers load where cnnspec is installed."""

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        self.model.save(str(path))


class TFLiteArtifact(_KerasArtifact):
    def __init__(self, graph: Graph, weights: dict[str, Array], options: dict[str, Any]) -> None:
        super().__init__(graph, weights, options)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the converter's chatter
                warnings.simplefilter("ignore")
                self.content = tf.lite.TFLiteConverter.from_keras_model(self.model).convert()
        except Exception as exc:  # the converter raises many kinds; say which, write nothing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"TensorFlow's TFLite converter failed for '{graph.name}': {first}") from None
        self._runner = _tflite_runner(self.content)

    def run(self, x: Array) -> Array:
        return self._runner(x)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        path.write_bytes(self.content)


def _tflite_runner(content: bytes) -> Callable[[Array], Array]:
    def run(x: Array) -> Array:
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (LiteRT replaces it)
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(x.shape))
        with chatter_filtered():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def _load_savedmodel(path: Path) -> Callable[[Array], Array]:
    loaded = tf.saved_model.load(str(path))
    return lambda x: loaded.serve(tf.constant(x)).numpy()


def _load_keras(path: Path) -> Callable[[Array], Array]:
    model = keras.saving.load_model(str(path))
    return lambda x: model(x, training=False).numpy()


EXPORTS: dict[str, Callable[[Graph, dict[str, Array], dict[str, Any]], Any]] = {
    "savedmodel": SavedModelArtifact,
    "keras": KerasFileArtifact,
    "tflite": TFLiteArtifact,
}


LOADERS: dict[str, Callable[[Path], Callable[[Array], Array]]] = {
    "savedmodel": _load_savedmodel,
    "keras": _load_keras,
    "tflite": lambda path: _tflite_runner(path.read_bytes()),
}


def load_keras_weights(graph: Graph, path: Path) -> dict[str, Array]:
    """Canonical weights from a Keras ``.weights.h5`` saved from the model this backend
    builds for ``graph`` (the same layer names; Keras' layout converted back)."""
    network = KerasNetwork(graph)
    network.model.load_weights(str(path))
    return network.get_weights()
