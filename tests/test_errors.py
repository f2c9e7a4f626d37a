"""Every class of spec error: reported at the exact line and column, all at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Errors = Callable[[str], list[str]]

HEAD = """
name: net
input: {shape: [3, 7, 7]}
layers:
"""


def test_non_integer_output_size_names_the_layer_and_fraction(spec_errors: Errors) -> None:
    assert spec_errors(HEAD + "  - conv2d: {filters: 8, kernel: 3, stride: 3}\n    name: c1\n") == [
        "4:5: conv2d 'c1': window does not fit: (7 + 0 - 3) / 3 + 1 = 7/3 = 2.33; "
        "declare rounding: floor (what PyTorch and Keras 'valid' do) or rounding: ceil (Caffe)"
    ]


def test_rounding_declared_on_the_layer_or_in_defaults(parse_spec: Callable[[str], object]) -> None:
    floor = parse_spec(HEAD + "  - conv2d: {filters: 8, kernel: 3, stride: 3, rounding: floor}\n")
    ceil = parse_spec(HEAD.replace("layers:", "defaults:\n  conv2d: {rounding: ceil}\nlayers:") + "  - conv2d: {filters: 8, kernel: 3, stride: 3}\n")
    assert floor.output_shape == (8, 2, 2)  # type: ignore[attr-defined]
    assert ceil.output_shape == (8, 3, 3)  # type: ignore[attr-defined]


def test_kernel_larger_than_padded_input(spec_errors: Errors) -> None:
    text = """
    name: net
    input: {shape: [16, 4, 4]}
    layers:
      - conv2d: {filters: 8, kernel: 5}
        name: c3
    """
    assert spec_errors(text) == [
        "4:34: conv2d 'c3': kernel 5 exceeds padded input 4 (input 16x4x4, padding 0)"
    ]


def test_add_channel_mismatch(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2d: {filters: 8, kernel: 1}
    name: a
  - conv2d: {filters: 4, kernel: 1}
    name: b
    inputs: [input]
  - add: {}
    inputs: [a, b]
"""
    assert spec_errors(text) == [
        "9:5: add 'add_1': channel mismatch: input 0 has 8 channels, input 1 has 4 (shapes 8x7x7 and 4x7x7)"
    ]


def test_concat_spatial_mismatch(spec_errors: Errors) -> None:
    text = HEAD + """\
  - maxpool2d: {kernel: 3, stride: 2}
    name: pooled
  - concat: {}
    name: joined
    inputs: [pooled, input]
"""
    assert spec_errors(text) == [
        "6:5: concat 'joined': spatial mismatch: input 0 is 3x3x3, input 1 is 3x7x7; concat joins channels and needs equal H x W"
    ]


def test_dangling_and_duplicate_names(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2d: {filters: 8, kernel: 1}
    name: stem
  - conv2d: {filters: 8, kernel: 1}
    name: stem
  - add: {}
    inputs: [stme, input]
"""
    assert spec_errors(text) == [
        "6:5: duplicate layer name 'stem' (first defined at line 4)",
        "9:14: add 'add_1': unknown input 'stme' (did you mean 'stem'?)",
    ]


def test_cycle(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2d: {filters: 3, kernel: 1}
    name: a
    inputs: [c]
  - conv2d: {filters: 3, kernel: 1}
    name: b
  - conv2d: {filters: 3, kernel: 1}
    name: c
"""
    assert spec_errors(text) == ["4:5: cycle in the layer graph: a -> c -> b -> a"]


def test_dense_on_a_feature_map_suggests_flatten(spec_errors: Errors) -> None:
    assert spec_errors(HEAD + "  - dense: {units: 10}\n") == [
        "4:5: dense 'dense_1': needs a vector but gets a 3x7x7 feature map; "
        "add 'flatten: {}' or 'global_avgpool2d: {}' before it"
    ]


def test_non_positive_sizes_and_wrong_types(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2d: {filters: 0, kernel: 3, padding: 1}
  - conv2d: {filters: six, kernel: [3, 0], padding: 1}
  - conv2d: {filters: 4, kernel: 2.5, bias: yes please}
  - dropout: {rate: 1.5}
"""
    assert spec_errors(text) == [
        "4:23: conv2d 'conv2d_1': filters: Input should be greater than 0, got 0",
        "5:23: conv2d 'conv2d_2': filters: Input should be a valid integer, got 'six'",
        "5:36: conv2d 'conv2d_2': kernel: expected a positive integer or a pair [h, w] of them, got [3, 0]",
        "6:34: conv2d 'conv2d_3': kernel: expected a positive integer or a pair [h, w] of them, got 2.5",
        "6:45: conv2d 'conv2d_3': bias: Input should be a valid boolean, got 'yes please'",
        "7:21: dropout 'dropout_1': rate: Input should be less than 1, got 1.5",
    ]


def test_unknown_kind_and_key_with_did_you_mean(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2dd: {filters: 8, kernel: 3}
  - conv2d: {filtres: 8, kernel: 3, padding: 1}
  - maxpool2d: {kernel: 2, strides: 1}
"""
    assert spec_errors(text) == [
        "4:5: unknown layer kind 'conv2dd' (did you mean 'conv2d'?)",
        "5:14: conv2d 'conv2d_1': unknown key 'filtres' (did you mean 'filters'?)",  # one error, not also 'missing filters'

        "6:28: maxpool2d 'maxpool2d_1': unknown key 'strides' (did you mean 'stride'?)",
    ]


def test_every_error_in_the_file_is_reported(spec_errors: Errors) -> None:
    text = """
    name: net
    input: {shape: [3, 32, 32]}
    defaults:
      conv2d: {activaton: relu}
    layers:
      - conv2d: {filters: 8, kernel: 3}
      - dense: {units: 10}
        name: head
      - conv2d: {filters: 8, kernel: 64}
        inputs: [input]
    expect: {output: [10]}
    """
    found = spec_errors(text)
    assert [line.split(": ")[0] for line in found] == ["4:12", "7:5", "9:34"]
    assert "defaults: conv2d has no argument 'activaton' (did you mean 'activation'?)" in found[0]
    assert "dense 'head': needs a vector" in found[1]
    assert "kernel 64 exceeds padded input 32" in found[2]


def test_keras_and_pytorch_names_are_recognised(spec_errors: Errors) -> None:
    text = HEAD + """\
  - Conv2D: {filters: 8, kernel_size: 3}
  - MaxPooling2D: {pool_size: 2}
  - ReLU: {}
  - maxpool2d {kernel: 2}
"""
    assert spec_errors(text) == [
        "4:5: unknown layer kind 'Conv2D' (did you mean 'conv2d'?)",
        "5:5: unknown layer kind 'MaxPooling2D' (did you mean 'maxpool2d'?)",
        "6:5: unknown layer kind 'ReLU' (did you mean 'relu'?)",
        "7:5: a ':' is missing after 'maxpool2d': write '- maxpool2d: {...}'",
    ]
    fixed = HEAD + "  - conv2d: {filters: 8, kernel_size: 3}\n  - maxpool2d: {pool_size: 2, strides: 2}\n"
    assert spec_errors(fixed) == [
        "4:26: conv2d 'conv2d_1': unknown key 'kernel_size' (did you mean 'kernel'?)",
        "5:17: maxpool2d 'maxpool2d_1': unknown key 'pool_size' (did you mean 'kernel'?)",
        "5:31: maxpool2d 'maxpool2d_1': unknown key 'strides' (did you mean 'stride'?)",
    ]


def test_a_tab_says_to_use_spaces(spec_errors: Errors) -> None:
    assert spec_errors(HEAD + "\t- relu: {}\n") == ["4:1: invalid YAML: a tab; tabs cannot indent YAML: use spaces"]


def test_header_errors(spec_errors: Errors) -> None:
    text = """
    name: my net
    input: {shape: [3, 32, 32, 1]}
    layer:
      - relu: {}
    """
    assert spec_errors(text) == [
        "1:7: name: 'my net' is not a name: use letters, digits, '_', '.' and '-' (no spaces), starting with a letter, digit or '_'",
        "2:16: input.shape: List should have at most 3 items after validation, not 4, got [3, 32, 32, 1]",
        "3:1: unknown key 'layer' (did you mean 'layers'?)",
    ]


def test_expect_mismatch_shows_expected_and_computed(spec_errors: Errors) -> None:
    text = """
    name: net
    input: {shape: [1, 32, 32]}
    layers:
      - conv2d: {filters: 6, kernel: 5}
        expect: {shape: [6, 32, 32], params: 150}
      - flatten: {}
    expect: {output: [6144], params: 156, macs: 1}
    """
    assert spec_errors(text) == [
        "5:13: conv2d 'conv2d_1': expected shape 6x32x32, computed 6x28x28",
        "5:13: conv2d 'conv2d_1': expected params 150, computed 156",
        "7:9: network 'net': expected output 6144, computed 4704",
        "7:9: network 'net': expected macs 1, computed 117,600",
    ]


def test_block_errors(spec_errors: Errors) -> None:
    text = """
    name: net
    input: {shape: [16, 8, 8]}
    blocks:
      res:
        params: {filters: required}
        layers:
          - conv2d: {filters: $filters, kernel: 3, padding: 1}
            name: conv
          - add: {}
            inputs: [conv, input]
      loop:
        layers:
          - loop: {}
    layers:
      - res: {filters: 32}
        name: wide
      - res: {fltrs: 16}
      - res: {}
      - conv2d: {filters: $filters, kernel: 1}
      - loop: {}
    """
    assert spec_errors(text) == [
        "9:9: add 'wide.add_1': channel mismatch: input 0 has 32 channels, input 1 has 16 "
        "(shapes 32x8x8 and 16x8x8) (in block 'res' used at line 15)",
        "13:9: block 'loop' uses itself (loop -> loop)",
        "17:5: block 'res' needs parameter 'filters'",
        "17:11: block 'res' has no parameter 'fltrs' (did you mean 'filters'?) (parameters: filters)",
        "18:5: block 'res' needs parameter 'filters'",
        "19:23: '$filters' refers to a block parameter, but this layer is not inside a block",
    ]


def test_unknown_block_parameter_reference(spec_errors: Errors) -> None:
    text = """
    name: net
    input: {shape: [3, 8, 8]}
    blocks:
      b:
        params: {filters: 4}
        layers:
          - conv2d: {filters: $filtres, kernel: 1}
    layers:
      - b: {}
    """
    assert spec_errors(text) == ["7:27: unknown block parameter '$filtres' (did you mean '$filters'?)"]


def test_groups_and_arity(spec_errors: Errors) -> None:
    text = HEAD + """\
  - conv2d: {filters: 8, kernel: 1, groups: 2}
  - add: {}
"""
    assert spec_errors(text) == [
        "4:45: conv2d 'conv2d_1': input channels 3 are not divisible by groups 2",
        "5:5: add 'add_1' takes at least 2 inputs, got 1; list them with 'inputs: [a, b]'",
    ]


def test_pool_padding_over_half_the_kernel(spec_errors: Errors) -> None:
    assert spec_errors(HEAD + "  - maxpool2d: {kernel: 2, padding: 2}\n") == [
        "4:37: maxpool2d 'maxpool2d_1': padding 2 exceeds half the kernel 2"
    ]


def test_a_diagnostic_at_line_100_keeps_its_place(tmp_path: Path) -> None:
    """Found by the fuzzer: the terminal library read "net.yaml:100:5:" as the emoji :100:."""
    from typer.testing import CliRunner

    from cnnspec.cli.app import app

    spec = tmp_path / "net.yaml"
    spec.write_text("name: x\ninput: {shape: [1, 8, 8]}\nlayers:\n" + "  - relu: {}\n" * 96 + "  - batchnor: {}\n")
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 1
    assert "net.yaml:100:5: error: unknown layer kind 'batchnor'" in result.output


def test_train_section_errors_at_their_lines_with_the_others(spec_errors: Errors) -> None:
    text = HEAD.replace("name: net", "name: net\ndescripton: x") + """  - conv2d: {filters: 4, kernel: 1}
train:
  optimzer: {lr: 0.1}
  epochs: 0
  schedule: {name: cosine, gamma: 2}
"""
    assert spec_errors(text) == [
        "2:1: unknown key 'descripton' (did you mean 'description'?)",
        "7:3: unknown key 'train.optimzer' (did you mean 'optimizer'?)",
        "8:11: train.epochs: Input should be greater than 0, got 0",
        "9:35: train.schedule.gamma: Input should be less than or equal to 1, got 2",
    ]


def test_an_empty_or_scalar_train_section(spec_errors: Errors, parse_spec: Callable[[str], object]) -> None:
    body = HEAD + "  - conv2d: {filters: 4, kernel: 1}\n"
    assert parse_spec(body + "train:\n").train.epochs == 10  # type: ignore[attr-defined]
    assert spec_errors(body + "train: 5\n") == ["5:8: train: Input should be a valid dictionary, got 5"]


def test_a_channels_last_input_is_named_before_the_size_error_it_causes(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "cl.yaml"
    spec.write_text("name: cl\ninput: {shape: [64, 64, 3]}\nlayers:\n  - conv2d: {filters: 8, kernel: 3}\n  - maxpool2d: {kernel: 2}\n"
                    "  - flatten: {}\n  - dense: {units: 3}\n")
    done = subprocess.run([sys.executable, "-m", "cnnspec", "check", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    said = done.stdout + done.stderr
    hint = said.index(f"{spec}:2:16: warning: input shape [64, 64, 3] looks channels-last")
    assert hint < said.index(f"{spec}:5:") and "error: maxpool2d" in said
