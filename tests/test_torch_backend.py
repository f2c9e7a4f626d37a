"""The torch lowering agrees with `check` and with hand-written references."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec import Graph
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional
from cnnspec.agreement import assert_agrees  # noqa: E402
from cnnspec.backends import torch_backend  # noqa: E402

Parse = Callable[[str], Graph]


def node_shapes(graph: Graph, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Every node's output shape from a real forward pass (hooks on each lowering)."""
    model = torch_backend.build(graph).eval()
    seen: dict[str, tuple[int, ...]] = {}
    for node, (module, *_rest) in zip(graph.nodes, model._steps, strict=True):
        module.register_forward_hook(lambda m, i, o, name=node.name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(batch, *graph.input_shape))
    return seen


def test_every_layer_kind_has_a_lowering() -> None:
    from cnnspec.layers import LAYERS

    assert set(LAYERS.values()) == set(torch_backend.LOWERINGS)


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_zoo_model_matches_check(name: str) -> None:
    graph = cnnspec.load_spec(name)
    model = torch_backend.build(graph)
    assert sum(p.numel() for p in model.parameters()) == graph.params
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(state) == list(graph.weights())  # canonical names, in layer order
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: s.shape for k, s in graph.weights().items()}
    assert sum(v.numel() for k, v in model.named_buffers() if not k.endswith("num_batches_tracked")) == graph.non_trainable
    assert node_shapes(graph) == {node.name: node.output_shape for node in graph}


def test_every_kind_and_padding_form_matches_check(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: kinds
        input: {shape: [4, 13, 11]}
        layers:
          - conv2d: {filters: 8, kernel: 3, padding: same, stride: 2, activation: relu6}
          - conv2d: {filters: 8, kernel: [3, 2], padding: [[1, 0], [0, 2]], groups: 4, activation: {prelu: {channelwise: true}}}
          - conv2d: {filters: 6, kernel: 3, stride: 2, rounding: ceil, dilation: 1, activation: elu}
          - maxpool2d: {kernel: 3, stride: 2, padding: 1, rounding: ceil}
            name: pooled
          - zero_padding2d: {padding: [[0, 1], [2, 0]]}
          - avgpool2d: {kernel: 2, stride: 1, padding: same, count_include_pad: false}
          - lrn: {size: 3}
          - batchnorm: {}
          - leaky_relu: {negative_slope: 0.2}
          - concat: {}
            inputs: [batchnorm_1, leaky_relu_1]
          - global_maxpool2d: {keepdims: true}
          - flatten: {}
          - dropout: {rate: 0.3}
          - dense: {units: 5, activation: tanh}
          - batchnorm: {}
          - sigmoid: {}
          - softmax: {}
        """
    )
    assert node_shapes(graph, batch=2) == {node.name: node.output_shape for node in graph}
    model = torch_backend.build(graph)
    assert sum(p.numel() for p in model.parameters()) == graph.params


def _single(parse_spec: Parse, layer: str, shape: str) -> tuple[torch.nn.Module, Graph]:
    graph = parse_spec(f"name: one\ninput: {{shape: {shape}}}\nlayers:\n  - {layer}\n")
    return torch_backend.build(graph).eval(), graph


def test_asymmetric_conv_padding_is_pad_then_convolve(parse_spec: Parse) -> None:
    model, graph = _single(parse_spec, "conv2d: {filters: 2, kernel: 3, padding: [[0, 2], [1, 0]]}", "[1, 5, 5]")
    x = torch.randn(1, 1, 5, 5)
    conv = model.conv2d_1
    expected = F.conv2d(F.pad(x, (1, 0, 0, 2)), conv.weight, conv.bias)
    with torch.no_grad():
        assert torch.allclose(model(x), expected)
    assert tuple(expected.shape[1:]) == graph.output_shape


def test_ceil_conv_pads_the_end_with_zeros(parse_spec: Parse) -> None:
    model, graph = _single(parse_spec, "conv2d: {filters: 1, kernel: 3, stride: 3, rounding: ceil, bias: false}", "[1, 7, 7]")
    x = torch.randn(1, 1, 7, 7)
    expected = F.conv2d(F.pad(x, (0, 2, 0, 2)), model.conv2d_1.weight, stride=3)
    with torch.no_grad():
        assert torch.allclose(model(x), expected)
    assert graph.output_shape == (1, 3, 3)


def test_average_pool_excluding_asymmetric_padding(parse_spec: Parse) -> None:
    model, _ = _single(parse_spec, "avgpool2d: {kernel: 2, stride: 1, padding: same, count_include_pad: false}", "[1, 3, 3]")
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    # 'same' for kernel 2 pads one row and column at the end; windows there average fewer pixels.
    a = x[0, 0].numpy()
    expected = np.array([[a[i : i + 2, j : j + 2].mean() for j in range(3)] for i in range(3)])
    with torch.no_grad():
        assert np.allclose(model(x)[0, 0].numpy(), expected)


def test_max_pool_asymmetric_padding_never_picks_the_padding(parse_spec: Parse) -> None:
    model, _ = _single(parse_spec, "maxpool2d: {kernel: 2, stride: 1, padding: same}", "[1, 2, 2]")
    x = -torch.ones(1, 1, 2, 2) * torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    with torch.no_grad():
        assert model(x)[0, 0].tolist() == [[-1.0, -2.0], [-3.0, -4.0]]


def test_weights_round_trip_exactly() -> None:
    graph = cnnspec.load_spec("resnet18")
    session = torch_backend.open_session(graph, TrainConfig(), device="cpu")
    weights = initial_weights(graph, seed=3)
    session.set_weights(weights)
    back = session.get_weights()
    assert list(back) == list(weights)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw"])
def test_optimizer_state_round_trip_continues_identically(optimizer: str) -> None:
    graph = cnnspec.load_spec("lenet5")
    config = TrainConfig.model_validate({"optimizer": {"name": optimizer, "lr": 0.01, "nesterov": optimizer == "sgd"}})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 8)
    first = torch_backend.open_session(graph, config, device="cpu")
    first.set_weights(initial_weights(graph, 0))
    first.train_step(x, y)
    first.train_step(x, y)
    second = torch_backend.open_session(graph, config, device="cpu")
    second.set_weights(first.get_weights())
    arrays, meta = first.optimizer_state()
    # as a checkpoint file gives them back: C-ordered, whatever the weights' layout (a
    # fused update given channels-last weights and NCHW state mixes up their elements)
    second.load_optimizer_state({name: np.ascontiguousarray(array) for name, array in arrays.items()}, meta)
    first.train_step(x, y)
    second.train_step(x, y)
    a, b = first.get_weights(), second.get_weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["c1.weight"], initial_weights(graph, 0)["c1.weight"])


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "hinge"])
def test_losses_train(loss: str) -> None:
    graph = cnnspec.load_spec("lenet5")
    session = torch_backend.open_session(graph, TrainConfig.model_validate({"loss": loss, "label_smoothing": 0.1}), device="cpu")
    session.set_weights(initial_weights(graph, 0))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    losses = [session.train_step(x, y)[0] for _ in range(15)]
    assert losses[-1] < losses[0]


def test_devices_that_are_not_there() -> None:
    with pytest.raises(torch_backend.DeviceError, match="unknown device 'tpu'"):
        torch_backend.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(torch_backend.DeviceError, match="sees no CUDA GPU"):
            torch_backend.resolve_device("cuda")
    assert torch_backend.resolve_device("cpu").type == "cpu"
    with pytest.raises(torch_backend.DeviceError, match="fp16 training needs a CUDA GPU"):
        torch_backend.open_session(cnnspec.load_spec("lenet5"), TrainConfig(), device="cpu", precision="fp16")


def test_bf16_on_the_cpu_is_mixed_precision_close_to_fp32() -> None:
    """`--precision bf16` on the CPU (opt-in, never auto): convolutions and dense layers in
    bf16 under autocast, weights and outputs float32; one step lands near the fp32 one."""
    from cnnspec.graph.load import with_input_size

    graph = with_input_size(cnnspec.load_spec("resnet18"), (32, 32))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 1000, 4).astype(np.int64)
    weights = initial_weights(graph, 0)
    results = {}
    for precision in ("fp32", "bf16"):
        session = torch_backend.open_session(graph, TrainConfig.model_validate({"optimizer": {"name": "sgd", "lr": 0.01}}), device="cpu", precision=precision)
        assert session.precision == precision
        session.set_weights(weights)
        outputs = session.predict(x)
        loss, _ = session.train_step(x, y)
        results[precision] = (loss, outputs, session.get_weights()["fc.weight"])
    assert torch_backend.open_session(graph, TrainConfig(), device="cpu").precision == "fp32"  # auto stays exact on the CPU
    (loss32, out32, w32), (loss16, out16, w16) = results["fp32"], results["bf16"]
    assert out16.dtype == np.float32 and w16.dtype == np.float32
    assert loss16 == pytest.approx(loss32, rel=2e-2) and loss16 != loss32  # bf16 really computed
    assert np.abs(out16 - out32).max() <= 5e-2 * np.abs(out32).max()
    step32, step16 = w32 - weights["fc.weight"], w16 - weights["fc.weight"]
    cosine = float((step16 * step32).sum() / (np.linalg.norm(step16) * np.linalg.norm(step32)))
    assert cosine >= 0.98, cosine  # the step points the same way (bf16 keeps 8 bits: about 10% apart, measured)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda_training_step(precision: str) -> None:
    graph = cnnspec.load_spec("resnet18")
    session = torch_backend.open_session(graph, TrainConfig(), device="cuda", precision=precision)
    session.set_weights(initial_weights(graph, 0))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 224, 224)).astype(np.float32), rng.integers(0, 1000, 8)
    loss, _ = session.train_step(x, y)
    assert np.isfinite(loss) and session.device.startswith("cuda") and session.precision == precision
    outputs = session.predict(x)
    assert outputs.shape == (8, 1000) and outputs.dtype == np.float32


def test_channels_last_trains_to_the_same_weights_as_nchw() -> None:
    """The layout auto picks on the CPU changes the speed, not the numbers: a residual
    network's loss and its weights after an SGD step are the NCHW ones (one step: later
    steps amplify float32 rounding, in either layout)."""
    from cnnspec.graph.load import with_input_size

    graph = with_input_size(cnnspec.load_spec("resnet18"), (32, 32))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 1000, 4).astype(np.int64)
    weights = initial_weights(graph, 0)
    results = {}
    for layout in ("contiguous", "channels_last"):
        config = TrainConfig.model_validate({"memory_format": layout, "optimizer": {"name": "sgd", "lr": 0.01}})
        session = torch_backend.open_session(graph, config, device="cpu", precision="fp32")
        assert session._channels_last == (layout == "channels_last")
        session.set_weights(weights)
        losses = [session.train_step(x, y)[0]]
        results[layout] = (losses, session.get_weights())
    assert_agrees(results["channels_last"][0], results["contiguous"][0])
    for name, array in results["contiguous"][1].items():
        assert_agrees(results["channels_last"][1][name], array, 1e-3, name)  # after a step: gradients summed in another order


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "adamw", "rmsprop"])
def test_fused_optimizers_step_as_a_hand_written_loop_does(optimizer: str) -> None:
    """On the CPU, cnnspec takes PyTorch's fused update where there is one; three steps
    (momentum, weight decay, Adam's moments) land where the per-parameter loop of a
    hand-written script does."""
    import torch

    graph = cnnspec.load_spec("lenet5")
    settings = {"name": optimizer, "lr": 0.01, "weight_decay": 1e-3, "nesterov": optimizer == "sgd"}
    config = TrainConfig.model_validate({"optimizer": settings, "memory_format": "contiguous"})  # the hand loop's layout: only the update differs
    session = torch_backend.open_session(graph, config, device="cpu", precision="fp32")
    assert session.optimizer.defaults.get("fused", None) is (True if optimizer in torch_backend.FUSED else None)
    weights = initial_weights(graph, 0)
    session.set_weights(weights)
    module = torch_backend._eval_module(graph, weights).train()
    kwargs = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {"eps": 1e-8, **({"momentum": 0.9} if optimizer == "rmsprop" else {})}
    hand = getattr(torch.optim, {"sgd": "SGD", "adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}[optimizer])(
        module.parameters(), lr=0.01, weight_decay=1e-3, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x, y = rng.standard_normal((8, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 8)
        session.train_step(x, y)
        loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
        hand.zero_grad()
        loss.backward()
        hand.step()
    expected = {name: value.detach().numpy() for name, value in module.state_dict().items()}
    for name, array in session.get_weights().items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)  # 0.1% of one 0.01 step
    assert not np.allclose(session.get_weights()["c1.weight"], weights["c1.weight"])


def test_memory_format_on_the_command_line(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cnnspec.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "lenet5", "--memory-format", "contiguous", "--epochs", "1", "--set", "data.limit=64", "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["train"]["memory_format"] == "contiguous"
    result = runner.invoke(app, ["train", "lenet5", "--memory-format", "channels-first", "--epochs", "1", "--out", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "memory_format" in result.output and "channels_last" in result.output
    assert not (tmp_path / "bad").exists()


def test_auto_layout_is_measured_once_per_cpu_and_network_and_draws_no_random_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU, ``memory_format: auto`` times both layouts on copies of the module, keeps
    the faster and caches the answer; the run's random numbers are those of a run that
    asked for a layout (the probe puts the generator back)."""
    import torch

    from cnnspec.backends import torch_layout
    from cnnspec.graph.load import with_input_size

    monkeypatch.setenv("CNNSPEC_CACHE_DIR", str(tmp_path))
    graph = with_input_size(cnnspec.load_spec("resnet18"), (32, 32))
    config = TrainConfig.model_validate({"batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.01}})
    session = torch_backend.open_session(graph, config, device="cpu", precision="fp32")
    assert session.layout.startswith(("channels-last: measured", "contiguous: measured")), session.layout
    after_probe = torch.rand(3)
    asked = "channels_last" if session._channels_last else "contiguous"
    plain = torch_backend.open_session(graph, TrainConfig.model_validate({**config.model_dump(), "memory_format": asked}), device="cpu")
    assert plain.layout == f"{asked}: asked" and torch.equal(torch.rand(3), after_probe)
    (entry,) = json.loads((tmp_path / "layouts.json").read_text()).values()
    assert entry["channels_last"] == session._channels_last and entry["ratio"] >= 1.0
    timed: list[int] = []
    monkeypatch.setattr(torch_layout, "_seconds_per_step", lambda *args: timed.append(1) or 1.0)
    again = torch_backend.open_session(graph, config, device="cpu", precision="fp32")
    assert not timed and again._channels_last == session._channels_last and "cached" in again.layout
    lenet = torch_backend.open_session(cnnspec.load_spec("lenet5"), config, device="cpu")  # another network: measured
    assert timed and lenet.layout.startswith("contiguous: measured")  # equal times: contiguous
    dense = cnnspec.parse_spec("name: d\ninput: {shape: [6]}\nlayers:\n  - dense: {units: 2}\n", "d.yaml")
    assert torch_backend.open_session(dense, config, device="cpu").layout == "contiguous: no convolution on an image input"
    bf16 = torch_backend.open_session(graph, config, device="cpu", precision="bf16")
    assert ("bf16 natively" in session.layout) == torch_layout.native_bf16() and "bf16 natively" not in bf16.layout
