"""Stage 1 of reading an ONNX model (see ``onnx_import``): the model made plain with the onnx
package's own tools, so that the rules of stage 2 stay small.

The opset is raised to 13 when older (``version_converter``, from any opset it reaches);
initializers leave the graph inputs (opset 8 and older list them there), and so do
inputs no node reads; the batch axis is fixed (to the file's own batch, or 1 where it
is symbolic) and the rest of the input must be fixed; shapes are inferred (``shape_inference``, with data
propagation); and every node whose inputs are all known is computed once with the
reference evaluator (``onnx.reference``): weights built by ``Constant``,
``ConstantOfShape`` or ``Unsqueeze``, ``Shape`` of a fixed shape and the arithmetic
on it. ``Identity``, reshapes that change nothing and gathers that move nothing disappear.

Shapes include the batch axis (the file's fixed batch, or 1 where it is symbolic).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnspec.backends.import_common import ImportRefused

TARGET_OPSET = 13  # Softmax over one axis; older models are converted up to it


ORT_OLDEST_OPSET = 7  # onnxruntime has no kernels for older versions of AveragePool, Gemm, BatchNormalization, PRelu


# Never computed ahead, even with known inputs: random, or state that training changes.
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}


Shape = tuple[int, ...]


_SMALL = 64  # constants up to this many values are shapes or axes, not weights


@dataclasses.dataclass
class Plain:
    """A model after ``normalise``: the nodes left to map, the known tensors, every shape."""

    nodes: list[Any]
    constants: dict[str, np.ndarray]
    shapes: dict[str, Shape]
    input: str
    output: str
    producer: str
    batch: int | None  # the batch size the file fixes; None where it is symbolic
    notes: list[str]  # what normalising dropped, for the user


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _unused_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are neither weights nor read by any node (old exporters leave
    them): not inputs of the model."""
    initialized = {i.name for i in model.graph.initializer}
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return [i.name for i in model.graph.input if i.name not in initialized and i.name not in read]


def without_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or a copy without its unused graph inputs (onnxruntime asks a
    value for every input, read or not)."""
    unused = set(_unused_inputs(model))
    if not unused:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [i for i in model.graph.input if i.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def _fixed_input(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None, list[str]]:
    """(a copy whose only graph input is the image, its batch axis fixed: the file's own
    batch, or 1 where it is symbolic; that batch or None; notes on what was dropped)."""
    unused = _unused_inputs(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initialized = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialized and i.name not in unused]
    notes = [f"dropped graph input(s) that no node reads: {', '.join(unused)}"] if unused else []
    if len(inputs) != 1:
        raise ImportRefused(f"the model has {len(inputs)} inputs besides its weights ({', '.join(i.name for i in inputs)}); a spec has one")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) < 2 or any(d.dim_value <= 0 for d in dims[1:]):
        shown = ["?" if d.dim_value <= 0 else str(d.dim_value) for d in dims[1:]]
        raise ImportRefused(f"the input '{inputs[0].name}' needs a fixed shape after the batch axis, got [{', '.join(shown)}]")
    if len(dims) > 4:
        reader = next(node for node in model.graph.node if inputs[0].name in node.input)
        raise ImportRefused(f"{node_label(reader)}: ONNX {reader.op_type} on a {len(dims)}-d input (a volume, or a sequence of images) "
                            "has no cnnspec layer kind: a spec's input is C x H x W at most")
    batch = int(dims[0].dim_value) if dims[0].dim_value > 0 else None
    dims[0].ClearField("dim_param")
    dims[0].dim_value = batch or 1  # a fixed batch stays: the file's reshapes may spell it out
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    if len(model.graph.output) != 1:
        raise ImportRefused(f"the model has {len(model.graph.output)} outputs; a spec has one")
    return model, batch, notes


def upgraded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at TARGET_OPSET, through the onnx package's version converter."""
    version = opset(model)
    if version >= TARGET_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # the converter raises RuntimeError and friends, with its reason
        raise ImportRefused(f"cannot convert opset {version} to {TARGET_OPSET}: {str(exc).strip().splitlines()[0][:200]}") from None


def evaluate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``model``'s first output on ``x`` through onnx's reference evaluator, which runs
    every operator version as the standard defines it (onnxruntime no longer runs
    opsets before 7): the reference for old files."""
    from onnx.reference import ReferenceEvaluator

    initialized = {i.name for i in model.graph.initializer}
    image = next(i.name for i in model.graph.input if i.name not in initialized)
    outputs: Any = ReferenceEvaluator(model).run(None, {image: x})  # a list of the outputs
    return np.asarray(outputs[0])


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # InferenceError: the model contradicts itself
        raise ImportRefused(f"the model's shapes do not check: {str(exc).strip().splitlines()[0][:200]}") from None
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.dim_value > 0 for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _evaluate(node: Any, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds))
    except Exception as exc:  # the evaluator's own errors: the node is malformed
        raise ImportRefused(f"{node_label(node)}: {node.op_type} on constant inputs fails: {str(exc).strip()[:200]}") from None


def _skeleton(model: onnx.ModelProto, nodes: list[Any], constants: dict[str, np.ndarray], output: str) -> onnx.ModelProto:
    """``nodes`` over ``model``'s input, for shape inference: large constants (weights) as
    typed inputs, so that their values are neither copied nor serialised; small ones
    (shapes, axes) as initializers, whose values data propagation reads."""
    small = {name: array for name, array in constants.items() if array.size <= _SMALL}
    typed = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape))
             for name, array in constants.items() if array.size > _SMALL]
    result = onnx.ValueInfoProto()
    result.CopyFrom(model.graph.output[0])
    result.name = output
    graph = helper.make_graph(nodes, model.graph.name, [*model.graph.input, *typed], [result],
                              initializer=[numpy_helper.from_array(array, name) for name, array in small.items()])
    skeleton = helper.make_model(graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = model.ir_version
    return skeleton


def _fold(nodes: list[Any], constants: dict[str, np.ndarray], shapes: dict[str, Shape], opset: int) -> tuple[list[Any], dict[str, str]]:
    """(nodes left, renamed tensors): one pass in the graph's order, adding what it
    computes to ``constants``."""
    alias: dict[str, str] = {}
    kept: list[Any] = []
    made: dict[str, Any] = {}  # tensor -> the kept node that computes it
    readers = Counter(name for node in nodes for name in node.input)
    for original in nodes:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for index, name in enumerate(node.input):
            node.input[index] = alias.get(name, name)
        inputs = [name for name in node.input if name]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Identity" or (node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and inputs[0] not in constants
                                          and shapes.get(inputs[0]) is not None and shapes.get(inputs[0]) == shapes.get(node.output[0])):
            alias[node.output[0]] = inputs[0]  # changes nothing
        elif node.op_type == "Gather" and _moves_nothing(node, made.get(inputs[0]), readers, constants, shapes):
            flat = made[inputs[0]]
            alias[node.output[0]] = flat.input[0]
            kept.remove(flat)
        elif node.op_type == "Shape" and inputs[0] in shapes:
            shape = np.array(shapes[inputs[0]], np.int64)
            constants[node.output[0]] = shape[attributes.get("start", 0): attributes.get("end", len(shape))]
        elif node.op_type not in _NOT_FOLDED and all(name in constants for name in inputs) and node.domain in ("", "ai.onnx"):
            outputs = _evaluate(node, {name: constants[name] for name in inputs}, opset)
            constants.update({name: np.asarray(value) for name, value in zip(node.output, outputs, strict=False) if name})
        else:
            kept.append(node)
            made.update((name, node) for name in node.output)
    return kept, alias


def _moves_nothing(gather: Any, flat: Any, readers: Counter[str], constants: dict[str, np.ndarray], shapes: dict[str, Shape]) -> bool:
    """A Reshape to one axis, read only by a Gather of every element in order into the
    Reshape's input shape: PyTorch's default exporter writes ``as_strided`` that way (a
    permute of size-one axes, as in a LayerNorm2d on a 1 x 1 map)."""
    indices = constants.get(gather.input[1])
    if flat is None or flat.op_type != "Reshape" or indices is None or readers[flat.output[0]] != 1:
        return False
    axis = next((helper.get_attribute_value(a) for a in gather.attribute if a.name == "axis"), 0)
    source = shapes.get(flat.input[0])
    return (axis == 0 and source is not None and len(shapes.get(flat.output[0], ())) == 1 and tuple(indices.shape) == tuple(source)
            and np.array_equal(indices.reshape(-1), np.arange(indices.size)))


def normalise(model: onnx.ModelProto) -> Plain:
    """The model made plain (see the module's docstring); refuses what no spec can be."""
    model, batch, notes = _fixed_input(upgraded(model))
    version = opset(model)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, output = list(model.graph.node), model.graph.output[0].name
    while True:  # folding a Shape can give the next pass more shapes, and so on (each pass folds some, or stops)
        shapes = _inferred_shapes(_skeleton(model, nodes, constants, output))
        kept, alias = _fold(nodes, constants, shapes, version)
        output = alias.get(output, output)  # the output came through an identity: the producer's tensor is the output now
        if len(kept) == len(nodes):  # nothing folded: these shapes are the final ones
            break
        nodes = kept
    if output in constants:
        raise ImportRefused("the model's output does not depend on its input")
    return Plain(nodes, constants, shapes, model.graph.input[0].name, output, model.producer_name, batch, notes)


def node_label(node: Any) -> str:
    return f"node '{node.name or node.output[0]}'"
