"""The TensorFlow backend against the NumPy reference: every layer kind (outputs, input
and weight gradients, batchnorm statistics), the flatten permutation, parameter counts,
PyTorch's optimizers and losses, training through the harness, checkpoints that move
between all three backends, and devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from layer_cases import KINDS, OPTIMIZER_CASES, assert_whole_samples_dropped, case_id, drop_path_graph, kind_graph
from typer.testing import CliRunner

import cnnspec
from cnnspec import Graph
from cnnspec.backends import numpy_backend
from cnnspec.cli.app import app
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import OptimizerConfig, TrainConfig

tf = pytest.importorskip("tensorflow")
from cnnspec.agreement import TOLERANCE, assert_agrees  # noqa: E402
from cnnspec.backends import tensorflow_backend, tensorflow_lowering  # noqa: E402

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
runner = CliRunner()


def perturbed_weights(graph: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded weights with constants moved off 0 and 1, so that every path is tested."""
    weights = initial_weights(graph, 0)
    for name, spec in graph.weights().items():
        if spec.init in ("zeros", "constant"):
            weights[name] = (weights[name] + rng.uniform(0.1, 0.5, spec.shape)).astype(np.float32)
    return weights


def compare(graph: Graph, training: bool, tolerance: float, batch: int = 3) -> None:
    """Outputs, input gradient, every weight gradient and batchnorm's running statistics:
    TensorFlow (through the canonical-layout bindings) against NumPy, float32."""
    rng = np.random.default_rng(0)
    weights = perturbed_weights(graph, rng)
    x = rng.standard_normal((batch, *graph.input_shape)).astype(np.float32)
    reference = numpy_backend.Network(graph, np, np.float32)
    for name, array in weights.items():
        reference.weights[name][...] = array
    expected = reference.forward(x, training)
    probe = rng.standard_normal(expected.shape).astype(np.float32)
    reference.grads = {}
    expected_grad_x = reference.backward(probe)

    network = tensorflow_backend.KerasNetwork(graph)
    network.set_weights(weights)
    xt = tf.constant(x)
    variables = [network.bindings[name].variable for name in network.trainable]
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = network.model(xt, training=training)
        objective = tf.reduce_sum(out * probe)
    grads = tape.gradient(objective, [xt, *variables])

    def close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
        assert_agrees(ours, theirs, tolerance, what)

    close(out.numpy(), expected, "output")
    close(grads[0].numpy(), expected_grad_x, "input gradient")
    for name, grad in zip(network.trainable, grads[1:], strict=True):
        close(network.bindings[name].from_keras(grad.numpy()), reference.grads[name], f"gradient of {name}")
    if training:
        ours = network.get_weights()
        for name in graph.weights():
            if name.endswith(("running_mean", "running_var")):
                close(ours[name], reference.weights[name], name)


MODES = [(name, training) for name in sorted(KINDS) for training in (True, False) if not (name.endswith("-eval") and training)]


@pytest.mark.parametrize(("name", "training"), MODES)
def test_layer_kind_matches_numpy(name: str, training: bool) -> None:
    compare(kind_graph(name), training, tolerance=TOLERANCE)


def test_every_layer_kind_has_a_lowering() -> None:
    from cnnspec.layers import LAYERS

    assert set(LAYERS.values()) == set(tensorflow_backend.LOWERINGS)


def test_keras_layers_carry_the_spec_names() -> None:
    graph = cnnspec.load_spec("resnet18")
    names = {layer.name for layer in tensorflow_backend.build(graph).layers}
    assert {node.name for node in graph.nodes} <= names
    assert all(name in {node.name for node in graph.nodes} or name.startswith(".") or name == "input" for name in names)


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_parameter_counts_equal_check(name: str) -> None:
    graph = cnnspec.load_spec(name)
    model = tensorflow_backend.KerasNetwork(graph).model
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == graph.params
    assert sum(int(np.prod(v.shape)) for v in model.non_trainable_weights) == graph.non_trainable
    assert tuple(model.output.shape[1:]) == graph.output_shape


def test_flatten_then_dense_permutes_the_kernel_rows() -> None:
    """The classic silent bug of a port: NHWC flattens (h, w, c), checkpoints (c, h, w).
    The Keras kernel's rows must be the canonical columns in NHWC order, and skipping the
    permutation must change the output (so the test above would catch it)."""
    graph = kind_graph("flatten-per-feature-dense")  # input 3 x 2 x 4
    network = tensorflow_backend.KerasNetwork(graph)
    weights = initial_weights(graph, 0)
    network.set_weights(weights)
    kernel = network.bindings["dense_1.weight"].variable.numpy()  # (24, 5)
    canonical = weights["dense_1.weight"]  # (5, 24): column c*8 + h*4 + w
    for h in range(2):
        for w in range(4):
            for c in range(3):
                assert np.array_equal(kernel[(h * 4 + w) * 3 + c], canonical[:, c * 8 + h * 4 + w])
    assert np.array_equal(network.get_weights()["dense_1.weight"], canonical)  # and back

    x = np.random.default_rng(1).standard_normal((2, 3, 2, 4)).astype(np.float32)
    right = network.model(x).numpy()
    network.bindings["dense_1.weight"].variable.assign(canonical.T)  # the unpermuted port
    assert np.abs(network.model(x).numpy() - right).max() > 1e-2


def test_verify_names_a_missing_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tensorflow_lowering._flatten

    def unpermuted(b: tensorflow_lowering.Builder, node: object, inputs: list[tensorflow_lowering.Value]) -> tensorflow_lowering.Value:
        return tensorflow_lowering.Value(real(b, node, inputs).tensor)  # type: ignore[arg-type]

    monkeypatch.setitem(tensorflow_lowering.LOWERINGS, cnnspec.layers.core.Flatten, unpermuted)
    result = runner.invoke(app, ["verify", "lenet5", "--backends", "numpy,tensorflow"])
    assert result.exit_code == 1
    assert "tensorflow diverges from numpy first at layer 'flatten_1' (flatten)" in result.output


@pytest.mark.parametrize("settings", OPTIMIZER_CASES, ids=case_id)
def test_optimizer_gives_the_references_update(settings: dict[str, object]) -> None:
    """The same weights and gradients for 4 steps: NumPy's update (itself equal to
    torch.optim's to 1e-12) and its state, slot for slot."""
    config = OptimizerConfig.model_validate({"lr": 0.01, **settings})
    rng = np.random.default_rng(4)
    start = rng.standard_normal((5, 3)).astype(np.float32)
    variable = tf.Variable(start)
    ours = tensorflow_backend.TorchOptimizer(config, {"w": variable})
    reference_weights = {"w": start.astype(np.float64)}
    reference = numpy_backend.Optimizer(config)
    for _ in range(4):
        grad = rng.standard_normal((5, 3)).astype(np.float32)
        ours.apply([tf.constant(grad)])
        reference.step(reference_weights, {"w": grad.astype(np.float64)}, ["w"])
    assert_agrees(variable.numpy(), reference_weights["w"])
    for slot, value in reference.state["w"].items():
        if slot != "step":
            assert_agrees(ours.slots["w"][slot].numpy(), value, what=slot)
    assert set(reference.state["w"]) - {"step"} == set(ours.slots["w"])


def test_losses_match_the_reference() -> None:
    rng = np.random.default_rng(3)
    outputs = rng.standard_normal((6, 5)).astype(np.float32)
    targets = rng.integers(0, 5, 6)
    for name in ("cross_entropy", "mse", "hinge"):
        for smoothing in (0.0, 0.2):
            config = TrainConfig.model_validate({"loss": name, "label_smoothing": smoothing})
            expected, _ = numpy_backend.LOSSES[name](outputs.astype(np.float64), targets, smoothing)
            ours = float(tensorflow_backend.LOSSES[name](config)(tf.constant(outputs), tf.constant(targets)))
            assert_agrees(ours, expected, what=f"{name}, smoothing {smoothing}")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_match_numpy(optimizer: str) -> None:
    graph = cnnspec.load_spec("lenet5")
    config = TrainConfig.model_validate({"optimizer": {"name": optimizer, "lr": 0.01}, "clip_grad_norm": 5.0})
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((16, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    ours = tensorflow_backend.open_session(graph, config, device="cpu")
    reference = numpy_backend.open_session(graph, config)
    for session in (ours, reference):
        session.set_weights(initial_weights(graph, 0))
    for _ in range(3):
        loss, correct = ours.train_step(x, y)
        expected_loss, expected_correct = reference.train_step(x, y)
        assert_agrees(loss, expected_loss)
        assert correct == expected_correct
    a, b = ours.get_weights(), reference.get_weights()
    for name in a:
        assert np.abs(a[name] - b[name]).max() <= 1e-3 * max(np.abs(b[name]).max(), 1e-3), name
    ours_state, reference_state = ours.optimizer_state()[0], reference.optimizer_state()[0]
    assert sorted(ours_state) == sorted(reference_state)
    for key, value in reference_state.items():
        assert ours_state[key].shape == np.shape(value), key


def test_optimizer_state_round_trips_through_the_canonical_layout() -> None:
    graph = kind_graph("flatten-per-feature-dense")
    config = TrainConfig.model_validate({"optimizer": {"name": "adam"}})
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 3, 2, 4)).astype(np.float32), rng.integers(0, 5, 8)
    first = tensorflow_backend.open_session(graph, config, device="cpu")
    first.set_weights(initial_weights(graph, 0))
    first.train_step(x, y)
    arrays, meta = first.optimizer_state()
    assert arrays["dense_1.weight::exp_avg"].shape == (5, 24)
    second = tensorflow_backend.open_session(graph, config, device="cpu")
    second.set_weights(first.get_weights())
    second.load_optimizer_state(arrays, meta)
    assert first.train_step(x, y)[0] == pytest.approx(second.train_step(x, y)[0], rel=1e-6)
    for name, array in first.get_weights().items():
        assert np.array_equal(array, second.get_weights()[name]), name


def test_checkpoints_run_on_every_backend(tmp_path: Path) -> None:
    """A run trained on any of the three backends evaluates on the other two to the same
    loss and accuracy."""
    pytest.importorskip("torch")
    settings = {"epochs": 1, "data.limit": 256, "batch_size": 32}
    by_tf = cnnspec.train("lenet5", "tensorflow", out=tmp_path / "tf", **settings)  # type: ignore[arg-type]
    by_numpy = cnnspec.train("lenet5", "numpy", out=tmp_path / "np", **settings)  # type: ignore[arg-type]
    by_torch = cnnspec.train("lenet5", "torch", out=tmp_path / "pt", **settings)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "tf" / "run.json").read_text())["backend"] == "tensorflow"
    for run, trained in ((tmp_path / "tf", by_tf), (tmp_path / "np", by_numpy), (tmp_path / "pt", by_torch)):
        for backend in ("numpy", "torch", "tensorflow"):
            report = cnnspec.evaluate(run, backend=backend)
            assert_agrees(report["loss"], trained.final["val_loss"], what=backend)
            assert report["accuracy"] == pytest.approx(trained.final["val_accuracy"], abs=1e-9), backend
    # From the same seed and data, the two backends train to the same numbers.
    assert by_tf.final["val_loss"] == pytest.approx(by_numpy.final["val_loss"], rel=1e-3)


def test_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    settings = {"data.limit": 256, "batch_size": 32, "optimizer.name": "adam"}
    whole = cnnspec.train("lenet5", "tensorflow", out=tmp_path / "whole", epochs=2, **settings)  # type: ignore[arg-type]
    cnnspec.train("lenet5", "tensorflow", out=tmp_path / "split", epochs=1, **settings)  # type: ignore[arg-type]
    resumed = cnnspec.resume(tmp_path / "split", epochs=2)
    assert resumed.final["val_loss"] == pytest.approx(whole.final["val_loss"], rel=1e-5)


def test_a_torch_run_resumes_on_tensorflow(tmp_path: Path) -> None:
    """Weights and Adam's state, saved by torch in the canonical layout, continue on
    TensorFlow as if nothing had changed."""
    pytest.importorskip("torch")
    settings = {"data.limit": 256, "batch_size": 32, "optimizer.name": "adam"}
    whole = cnnspec.train("lenet5", "torch", out=tmp_path / "whole", epochs=2, **settings)  # type: ignore[arg-type]
    cnnspec.train("lenet5", "torch", out=tmp_path / "split", epochs=1, **settings)  # type: ignore[arg-type]
    resumed = cnnspec.resume(tmp_path / "split", backend="tensorflow", epochs=2)
    assert resumed.final["val_loss"] == pytest.approx(whole.final["val_loss"], rel=1e-3)
    assert resumed.final["val_accuracy"] == pytest.approx(whole.final["val_accuracy"], abs=0.01)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                    reason="checks the message a machine without a GPU gives; test_gpu_session_matches_cpu covers a GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    result = runner.invoke(app, ["train", "lenet5", "--backend", "tensorflow", "--device", "cuda", "--quiet"])
    assert result.exit_code == 1
    assert "sees no GPU" in result.output
    assert runner.invoke(app, ["train", "lenet5", "-b", "tensorflow", "--precision", "fp16", "--quiet"]).exit_code == 1


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU here")
def test_gpu_session_matches_cpu() -> None:
    graph = cnnspec.load_spec("lenet5")
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    outputs = []
    for device in ("cpu", "cuda"):
        session = tensorflow_backend.open_session(graph, graph.train, device=device)
        session.set_weights(initial_weights(graph, 0))
        outputs.append(session.predict(x))
        assert session.device == ("cpu" if device == "cpu" else "cuda:0")
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-3 * np.abs(outputs[0]).max()


@pytest.mark.skipif(not MNIST.exists(), reason="the shared MNIST test set is not beside this checkout")
def test_tensorflow_lenet5_reaches_97_percent_on_mnist(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--backend", "tensorflow", "--data", str(MNIST),
         "--epochs", "5", "--out", "run", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["epoch"] == 5 and final["val_accuracy"] >= 0.97


def test_tensorflow_start_up_chatter_does_not_reach_the_user(tmp_path: Path) -> None:
    for args in (["verify", "lenet5", "--backends", "numpy,tensorflow"], ["export", "lenet5", "--to", "tflite", "-o", "m.tflite"]):
        done = subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        for noise in ("absl::InitializeLog", "oneDNN custom operations", "XNNPACK delegate"):
            assert noise not in done.stderr + done.stdout, (args, done.stderr)


def test_real_warnings_still_pass_the_filter(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    from cnnspec.backends.tf_quiet import chatter_filtered

    with chatter_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"W0000 something real went wrong\n")
    captured = capfd.readouterr().err
    assert "something real went wrong" in captured
    assert "absl::InitializeLog" not in captured


def test_drop_path_drops_whole_samples_in_tensorflow() -> None:
    model = tensorflow_backend.build(drop_path_graph())
    x = np.ones((2000, 3, 4, 4), np.float32)
    assert_whole_samples_dropped(np.asarray(model(x, training=True)))
    assert np.array_equal(np.asarray(model(x, training=False)), x)
