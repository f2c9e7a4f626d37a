"""What the spec language means: each feature against numbers worked out by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cnnspec import Graph
from cnnspec.layers import LAYERS

Parse = Callable[[str], Graph]


def test_readme_example_lenet5(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: lenet5
        input: {shape: [1, 32, 32]}
        defaults:
          conv2d: {activation: relu}
        layers:
          - conv2d: {filters: 6, kernel: 5}
            name: c1
            expect: {shape: [6, 28, 28], params: 156}
          - maxpool2d: {kernel: 2}
          - conv2d: {filters: 16, kernel: 5}
          - maxpool2d: {kernel: 2}
          - flatten: {}
          - dense: {units: 120, activation: relu}
          - dense: {units: 84, activation: relu}
          - dense: {units: 10}
        expect: {output: [10], params: 61706}
        """
    )
    assert [n.name for n in graph] == [
        "c1", "maxpool2d_1", "conv2d_1", "maxpool2d_2", "flatten_1", "dense_1", "dense_2", "dense_3",
    ]
    assert [n.output_shape for n in graph][:5] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (400,)]
    assert [n.params for n in graph] == [156, 0, 2416, 0, 0, 48120, 10164, 850]
    assert graph.macs == 117600 + 240000 + 48000 + 10080 + 840
    assert graph.is_sequential
    assert graph["c1"].layer.activation is not None  # from defaults


def test_blocks_parameters_repeat_and_names(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [8, 16, 16]}
        blocks:
          res:
            params: {filters: required, kernel: 3}
            layers:
              - conv2d: {filters: $filters, kernel: $kernel, padding: 1}
                name: conv
              - add: {}
                inputs: [conv, input]
        layers:
          - res: {filters: 8}
            name: stage
            repeat: 3
          - res: {filters: 8}
            name: more.4
            repeat: 2
          - res: {filters: 8}
          - conv2d: {filters: 2, kernel: 1}
            inputs: [stage]
            name: side
        """
    )
    names = [n.name for n in graph]
    assert names[:6] == ["stage.0.conv", "stage.0.add_1", "stage.1.conv", "stage.1.add_1", "stage.2.conv", "stage.2.add_1"]
    assert names[6:10] == ["more.4.conv", "more.4.add_1", "more.5.conv", "more.5.add_1"]
    assert names[10:12] == ["res_1.conv", "res_1.add_1"]
    assert graph["stage.1.conv"].inputs == ("stage.0.add_1",)
    assert graph["stage.1.add_1"].inputs == ("stage.1.conv", "stage.0.add_1")
    assert graph["side"].inputs == ("stage.2.add_1",)  # a repeated group's name means its last output
    assert graph["stage.0.conv"].params == 8 * 8 * 9 + 8
    assert graph.output == "side"
    assert [w.message for w in graph.warnings] == ["add 'res_1.add_1': output is never used"]


def test_a_block_parameter_may_stand_for_a_layer_kind(parse_spec: Parse, spec_errors: Callable[[str], list[str]]) -> None:
    """MobileNetV3's blocks differ only in their activation: ``- $activation: {}``."""
    text = """
        name: net
        input: {shape: [4, 8, 8]}
        blocks:
          conv_act:
            params: {filters: required, activation: relu}
            layers:
              - conv2d: {filters: $filters, kernel: 1}
              - $activation: {}
                name: act
        layers:
          - conv_act: {filters: 4}
            name: a
          - conv_act: {filters: 4, activation: hard_swish}
            name: b
          - conv_act: {filters: 4, activation: %s}
        """
    graph = parse_spec(text % "gelu")
    assert [graph[name].kind for name in ("a.act", "b.act", "conv_act_1.act")] == ["relu", "hard_swish", "gelu"]
    assert spec_errors(text % "hard_swishy") == ["15:40: unknown layer kind 'hard_swishy' (did you mean 'hard_swish'?)"]
    assert spec_errors(text % "[1]") == ["15:40: '$activation' stands for a layer kind here, but is bound to [1], not a kind name"]


def test_block_instance_name_means_its_output_and_expect_sums_its_layers(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [4, 8, 8]}
        blocks:
          pair:
            params: {filters: required}
            layers:
              - conv2d: {filters: $filters, kernel: 1}
              - conv2d: {filters: $filters, kernel: 1}
        layers:
          - pair: {filters: 4}
            name: a
            expect: {shape: [4, 8, 8], params: 40, macs: 2048}
          - concat: {}
            inputs: [a, input]
        """
    )
    assert graph["concat_1"].inputs == ("a.conv2d_2", "input")
    assert graph.output_shape == (8, 8, 8)


@pytest.mark.parametrize(
    ("padding", "stride", "shape"),
    [
        ("same", 1, (4, 9, 10)),
        ("same", 2, (4, 5, 5)),
        ("valid", 1, (4, 7, 8)),
        ("1", 1, (4, 9, 10)),
        ("[0, 1]", 1, (4, 7, 10)),
        ("[[1, 0], [0, 2]]", 1, (4, 8, 10)),
    ],
)
def test_padding_forms(parse_spec: Parse, padding: str, stride: int, shape: tuple[int, ...]) -> None:
    graph = parse_spec(
        f"""
        name: net
        input: {{shape: [3, 9, 10]}}
        layers:
          - conv2d: {{filters: 4, kernel: 3, padding: {padding}, stride: {stride}}}
        """
    )
    assert graph.output_shape == shape


def test_scalar_or_pair_sizes_and_dilation_groups(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [8, 20, 31]}
        layers:
          - conv2d: {filters: 16, kernel: [3, 5], stride: [1, 2], padding: [1, 2], groups: 4}
          - conv2d: {filters: 16, kernel: 3, dilation: 2, groups: 16, bias: false}
          - avgpool2d: {kernel: [2, 3]}
          - zero_padding2d: {padding: [[0, 1], [2, 3]]}
        """
    )
    # width: (31 + 4 - 5)/2 + 1 = 16; dilated span 5: 20 - 4 = 16, 16 - 4 = 12; pool 8x4; pad 9x9
    assert [n.output_shape for n in graph] == [(16, 20, 16), (16, 16, 12), (16, 8, 4), (16, 9, 9)]
    assert graph.params == (16 * 2 * 15 + 16) + (16 * 1 * 9)
    assert graph.nodes[0].macs == 20 * 16 * 16 * 2 * 15


def test_activation_argument_and_layers(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [3, 4, 4]}
        layers:
          - conv2d: {filters: 4, kernel: 1, activation: {leaky_relu: {negative_slope: 0.2}}}
          - conv2d: {filters: 4, kernel: 1, activation: {prelu: {channelwise: true}}}
          - prelu: {}
          - batchnorm: {}
          - lrn: {size: 3}
          - global_avgpool2d: {}
          - dropout: {rate: 0.1}
          - dense: {units: 5, activation: softmax}
        """
    )
    first = graph.nodes[0].layer
    assert first.activation is not None and first.activation.negative_slope == 0.2  # type: ignore[attr-defined]
    assert [n.params for n in graph] == [16, 20 + 4, 1, 8, 0, 0, 0, 25]
    assert graph.non_trainable == 8
    assert graph.output_shape == (5,)


def test_every_activation_is_usable_both_ways(parse_spec: Parse) -> None:
    from cnnspec.layers.activation import Activation

    names = [kind for kind, cls in LAYERS.items() if issubclass(cls, Activation)]
    assert set(names) == {"relu", "relu6", "leaky_relu", "prelu", "elu", "sigmoid", "tanh", "softmax", "silu", "hard_sigmoid",
                          "hard_swish", "gelu"}
    body = "".join(f"  - {name}: {{}}\n  - dense: {{units: 3, activation: {name}}}\n" for name in names)
    graph = parse_spec("name: net\ninput: {shape: [3]}\nlayers:\n" + body)
    assert len(graph.nodes) == 2 * len(names)


def test_forward_references_order_the_graph(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [3, 8, 8]}
        layers:
          - add: {}
            name: out
            inputs: [a, b]
          - conv2d: {filters: 3, kernel: 1}
            name: a
            inputs: [input]
          - conv2d: {filters: 3, kernel: 1}
            name: b
            inputs: [input]
        """
    )
    assert [n.name for n in graph] == ["a", "b", "out"]
    assert graph.output == "b"  # the last layer written is the output ...
    assert [str(w).split(": ", 1)[1] for w in graph.warnings] == ["warning: add 'out': output is never used"]


def test_receptive_field_and_activation_memory(parse_spec: Parse) -> None:
    graph = parse_spec(
        """
        name: net
        input: {shape: [1, 16, 16]}
        layers:
          - conv2d: {filters: 2, kernel: 3, padding: 1}
          - maxpool2d: {kernel: 2}
          - conv2d: {filters: 2, kernel: 3, dilation: 2, padding: 2}
          - flatten: {}
        """
    )
    fields = [n.receptive_field.size if n.receptive_field else None for n in graph]
    assert fields == [(3, 3), (4, 4), (12, 12), None]  # 4 + (5 - 1) * 2
    assert graph.activation_bytes == 4 * (2 * 256 + 2 * 64 + 2 * 64 + 128)
