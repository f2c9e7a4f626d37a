"""The NumPy reference: every layer kind against PyTorch autograd and finite
differences, whole zoo models, optimizers, checkpoints across backends, accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from layer_cases import KINDS, OPTIMIZER_CASES, assert_whole_samples_dropped, case_id, drop_path_graph, kind_graph
from zoo_cases import spec_text

import cnnspec
from cnnspec import Graph
from cnnspec.backends import numpy_backend
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig

torch = pytest.importorskip("torch")
from cnnspec.agreement import FLOAT64_TOLERANCE, TOLERANCE, assert_agrees  # noqa: E402
from cnnspec.backends import torch_backend  # noqa: E402

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"

def compare(graph: Graph, batch: int, training: bool, tolerance: float, seed: int = 0, dtype: type = np.float32,
            outputs_only: bool = False) -> None:
    """Outputs, input gradient and every weight gradient, numpy against torch autograd."""
    rng = np.random.default_rng(seed)
    weights = initial_weights(graph, seed)
    for name, spec in graph.weights().items():  # move constants off 0/1 so every path is tested
        if spec.init in ("zeros", "constant"):
            weights[name] = (weights[name] + rng.uniform(0.1, 0.5, spec.shape)).astype(np.float32)
    x = rng.standard_normal((batch, *graph.input_shape)).astype(dtype)
    network = numpy_backend.Network(graph, np, dtype)
    for name, array in weights.items():
        network.weights[name][...] = array
    out = network.forward(x, training)
    probe = rng.standard_normal(out.shape).astype(dtype)
    network.grads = {}
    grad_x = network.backward(probe)

    model = torch_backend.build(graph).train(training)
    if dtype == np.float64:
        model = model.double()
    state = model.state_dict()
    for name, array in weights.items():
        state[name].copy_(torch.from_numpy(array.astype(dtype)))
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = model(xt)
    (out_t * torch.from_numpy(probe)).sum().backward()

    def close(ours: np.ndarray, theirs: torch.Tensor, what: str) -> None:
        assert_agrees(ours, theirs.detach().numpy(), tolerance, what)

    close(out, out_t, "output")
    if outputs_only:
        return
    if graph.nodes[0].inputs == ("input",) and any(n.kind != "dropout" for n in graph):
        close(grad_x, xt.grad, "input gradient")
    parameters = dict(model.named_parameters())
    for name in network.trainable:
        close(network.grads[name], parameters[name].grad, f"gradient of {name}")
    if training:
        for name, value in model.named_buffers():
            if not name.endswith("num_batches_tracked"):
                close(network.weights[name], value, name)  # batchnorm running statistics


# Dropout is compared in evaluation mode only: in training the two backends draw their
# masks from different generators (test_dropout_statistics covers training).
MODES = [(name, training) for name in sorted(KINDS) for training in (True, False) if not (name.endswith("-eval") and training)]


@pytest.mark.parametrize(("name", "training"), MODES)
def test_layer_kind_matches_torch_autograd(name: str, training: bool) -> None:
    compare(kind_graph(name), batch=3, training=training, tolerance=TOLERANCE)


def test_every_layer_kind_is_covered() -> None:
    from cnnspec.layers import LAYERS

    assert set(LAYERS.values()) == set(numpy_backend.LOWERINGS)
    covered = {node.kind for name in KINDS for node in kind_graph(name)}
    assert covered == set(LAYERS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_gradients_match_finite_differences(name: str) -> None:
    """float64: central differences on a few coordinates of the input and each weight."""
    graph = kind_graph(name)
    rng = np.random.default_rng(1)
    network = numpy_backend.Network(graph, np, np.float64)
    for key, array in initial_weights(graph, 1).items():
        network.weights[key][...] = array + rng.uniform(0.1, 0.3, array.shape) * (graph.weights()[key].init in ("zeros", "constant"))
    x = rng.standard_normal((2, *graph.input_shape))
    probe = rng.standard_normal(network.forward(x, False).shape)

    def loss(inputs: np.ndarray) -> float:
        return float((network.forward(inputs, False) * probe).sum())

    network.grads = {}
    network.forward(x, False)
    grad_x = network.backward(probe)
    analytic = {name: network.grads[name].copy() for name in network.trainable}
    eps = 1e-6
    for index in map(tuple, rng.integers(0, x.shape, size=(4, x.ndim))):
        bumped = x.copy()
        bumped[index] += eps
        lowered = x.copy()
        lowered[index] -= eps
        numeric = (loss(bumped) - loss(lowered)) / (2 * eps)
        assert numeric == pytest.approx(grad_x[index], rel=1e-5, abs=1e-7)
    for key in network.trainable:
        weight = network.weights[key]
        for index in map(tuple, rng.integers(0, weight.shape, size=(3, weight.ndim))):
            saved = weight[index]
            weight[index] = saved + eps
            up = loss(x)
            weight[index] = saved - eps
            down = loss(x)
            weight[index] = saved
            assert (up - down) / (2 * eps) == pytest.approx(analytic[key][index], rel=1e-5, abs=1e-7), key


SIZES = {"lenet5": 32, "alexnet": 96, "vgg16": 32, "vgg19": 32, "googlenet": 64, "resnet18": 64, "resnet34": 64, "resnet50": 64}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_zoo_model_matches_torch(name: str) -> None:
    graph = cnnspec.parse_spec(spec_text(name), f"{name}.yaml")
    if SIZES[name] != graph.input_shape[1]:
        graph = with_input_size(graph, (SIZES[name], SIZES[name]))
    # Training mode where there is no dropout (the two backends draw different masks).
    training = not any(node.kind == "dropout" for node in graph)
    # float64: outputs and every gradient agree to rounding (about 1e-13 measured).
    compare(graph, batch=2, training=training, tolerance=FLOAT64_TOLERANCE, dtype=np.float64)
    # float32: outputs within 1e-4. Gradients of deep ResNets differ more (up to ~1% of
    # the largest input gradient in ResNet-50): float32 rounding flips ReLU masks near
    # zero, and 50 layers compound it; the float64 comparison above is the proof.
    compare(graph, batch=2, training=training, tolerance=TOLERANCE, outputs_only=True)


def test_dropout_statistics() -> None:
    network = numpy_backend.Network(kind_graph("dropout-eval"), np, np.float32, seed=0)
    x = np.ones((2000, 4, 3), np.float32)
    out = network.forward(x, training=True)
    assert (out == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert set(np.unique(out)) == {0.0, 2.0}  # kept values scaled by 1/(1 - rate)
    assert np.array_equal(network.backward(np.ones_like(out)), out)  # the same mask


def test_drop_path_drops_whole_samples_in_numpy_and_torch() -> None:
    x = np.ones((2000, 3, 4, 4), np.float32)
    network = numpy_backend.Network(drop_path_graph(), np, np.float32, seed=0)
    out = network.forward(x, training=True)
    assert_whole_samples_dropped(out)
    assert np.array_equal(network.backward(np.ones_like(out)), out)
    assert np.array_equal(network.forward(x, training=False), x)
    module = torch_backend.build(drop_path_graph()).train()
    assert_whole_samples_dropped(module(torch.from_numpy(x)).detach().numpy())
    assert np.array_equal(module.eval()(torch.from_numpy(x)).detach().numpy(), x)




@pytest.mark.parametrize("settings", OPTIMIZER_CASES, ids=case_id)
def test_optimizer_gives_pytorchs_update_from_the_same_state(settings: dict[str, object]) -> None:
    """Identical weights and gradients in, for 4 steps: the same weights and state out."""
    from cnnspec.spec.training import OptimizerConfig

    config = OptimizerConfig.model_validate({"lr": 0.01, **settings})
    rng = np.random.default_rng(4)
    start = rng.standard_normal((5, 3)).astype(np.float64)
    ours_weights = {"w": start.copy()}
    ours = numpy_backend.Optimizer(config)
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    theirs = torch_backend.OPTIMIZERS[config.name]([param], config)
    for _ in range(4):
        grad = rng.standard_normal((5, 3))
        ours.step(ours_weights, {"w": grad.copy()}, ["w"])
        param.grad = torch.from_numpy(grad.copy())
        theirs.step()
    assert_agrees(ours_weights["w"], param.detach().numpy(), FLOAT64_TOLERANCE)
    torch_state = theirs.state[param]
    assert set(ours.state["w"]) == set(torch_state)  # the same slot names
    for slot, value in torch_state.items():
        assert_agrees(np.asarray(ours.state["w"][slot]), torch.as_tensor(value).numpy(), FLOAT64_TOLERANCE, slot)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_match_torch_end_to_end(optimizer: str) -> None:
    graph = cnnspec.load_spec("lenet5")
    config = TrainConfig.model_validate({"optimizer": {"name": optimizer, "lr": 0.01}, "clip_grad_norm": 5.0})
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((16, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    ours = numpy_backend.open_session(graph, config)
    theirs = torch_backend.open_session(graph, config, device="cpu")
    for session in (ours, theirs):
        session.set_weights(initial_weights(graph, 0))
    for _ in range(3):
        assert_agrees(ours.train_step(x, y)[0], theirs.train_step(x, y)[0])
    a, b = ours.get_weights(), theirs.get_weights()
    for name in a:
        assert np.abs(a[name] - b[name]).max() <= 1e-3 * max(np.abs(b[name]).max(), 1e-3), name
    assert sorted(ours.optimizer_state()[0]) == sorted(theirs.optimizer_state()[0])


def test_losses_match_pytorch() -> None:
    rng = np.random.default_rng(3)
    outputs = rng.standard_normal((6, 5)).astype(np.float64)
    targets = rng.integers(0, 5, 6)
    cases = {
        "cross_entropy": lambda o, t: torch.nn.functional.cross_entropy(o, t, label_smoothing=0.2),
        "mse": lambda o, t: torch.nn.functional.mse_loss(o, torch.nn.functional.one_hot(t, 5).double()),
        "hinge": lambda o, t: torch.nn.functional.multi_margin_loss(o, t),
    }
    for name, reference in cases.items():
        value, grad = numpy_backend.LOSSES[name](outputs.copy(), targets, 0.2)
        o = torch.from_numpy(outputs).requires_grad_(True)
        expected = reference(o, torch.from_numpy(targets))
        expected.backward()
        assert_agrees(value, float(expected.detach()), FLOAT64_TOLERANCE, name)
        assert_agrees(grad, o.grad.numpy(), FLOAT64_TOLERANCE, name)


def test_checkpoints_move_between_backends(tmp_path: Path) -> None:
    settings = {"epochs": 1, "data.limit": 256, "batch_size": 32}
    by_torch = cnnspec.train("lenet5", "torch", out=tmp_path / "t", **settings)  # type: ignore[arg-type]
    by_numpy = cnnspec.train("lenet5", "numpy", out=tmp_path / "n", **settings)  # type: ignore[arg-type]
    for run, trained in ((tmp_path / "t", by_torch), (tmp_path / "n", by_numpy)):
        for backend in ("numpy", "torch"):
            report = cnnspec.evaluate(run, backend=backend)
            assert_agrees(report["loss"], trained.final["val_loss"])
            assert report["accuracy"] == pytest.approx(trained.final["val_accuracy"], abs=1e-9)
    # and the two backends trained to the same numbers from the same seed
    assert by_numpy.final["val_loss"] == pytest.approx(by_torch.final["val_loss"], rel=1e-3)


def test_numpy_backend_on_cuda_without_cupy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether or not CuPy is installed here: a None entry in sys.modules makes
    `import cupy` fail, as on a machine without it."""
    from typer.testing import CliRunner

    from cnnspec.cli.app import app

    monkeypatch.setitem(sys.modules, "cupy", None)
    result = CliRunner().invoke(app, ["train", "lenet5", "--backend", "numpy", "--device", "cuda", "--quiet"])
    assert result.exit_code == 1
    assert "through CuPy, which is not installed" in result.output


@pytest.mark.skipif(not MNIST.exists(), reason="the shared MNIST test set is not beside this checkout")
def test_numpy_lenet5_reaches_97_percent_on_mnist(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--backend", "numpy", "--data", str(MNIST), "--epochs", "5", "--out", "run", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["epoch"] == 5 and final["val_accuracy"] >= 0.97


def test_memory_estimate_covers_a_real_numpy_training_step() -> None:
    """The harness's estimate, with the backend's im2col workspace, is not below what a
    LeNet-5 step really allocates (tracemalloc sees NumPy's memory)."""
    import tracemalloc

    from cnnspec.harness.memory import estimate_memory

    graph = cnnspec.load_spec("lenet5")
    session = numpy_backend.open_session(graph, graph.train)
    session.set_weights(initial_weights(graph, 0))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 64)
    session.train_step(x, y)
    tracemalloc.start()
    session.train_step(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fixed, per_sample = estimate_memory(graph, graph.train, numpy_backend.workspace_bytes(graph))
    assert numpy_backend.workspace_bytes(graph) == 2 * (28 * 28 * 1 * 25 + 10 * 10 * 6 * 25) * 4
    assert fixed + 64 * per_sample >= peak
