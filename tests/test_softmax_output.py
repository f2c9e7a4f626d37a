"""A network whose output ends in softmax (Keras applications, and their imports, end so):
training, eval and predict use its logits, exports keep the probabilities, a new head
from ``--classes`` gives logits, and ``train`` repeats ``check``'s warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec.graph.load import logits_graph, parse_spec

PLAIN = """\
name: tiny
input: {shape: [1, 8, 8]}
layers:
  - conv2d: {filters: 4, kernel: 3, activation: relu}
    name: c1
  - flatten: {}
  - dense: {units: 10}
    name: out
"""
SOFTMAX = PLAIN.replace("dense: {units: 10}", "dense: {units: 10, activation: softmax}")
LAYER = PLAIN + "  - softmax: {}\n"
SETTINGS = {"data.source": "digits", "epochs": 2, "batch_size": 32, "data.limit": 300}


def test_the_logits_graph_drops_an_output_softmax_and_nothing_else() -> None:
    for text in (SOFTMAX, LAYER):
        graph = parse_spec(text, "tiny.yaml")
        logits = logits_graph(graph)
        assert logits.output == "out" and logits.output_shape == (10,)
        assert logits.weights().keys() == graph.weights().keys()
        assert getattr(logits["out"].layer, "activation", None) is None
    plain = parse_spec(PLAIN, "tiny.yaml")
    assert logits_graph(plain) is plain


@pytest.mark.parametrize("text", [SOFTMAX, LAYER], ids=["activation", "layer"])
def test_a_softmax_output_trains_as_its_logits_would(tmp_path: Path, text: str) -> None:
    plain = cnnspec.train(parse_spec(PLAIN, "tiny.yaml"), "numpy", out=tmp_path / "plain", quiet=True, **SETTINGS)  # type: ignore[arg-type]
    ending = cnnspec.train(parse_spec(text, "tiny.yaml"), "numpy", out=tmp_path / "softmax", quiet=True, **SETTINGS)  # type: ignore[arg-type]
    for a, b in zip(plain.history, ending.history, strict=True):  # the same code computes both: the same numbers
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == b[key], key
    assert "softmax" in (tmp_path / "softmax" / "spec.yaml").read_text()  # the run keeps the spec as written
    image = np.random.default_rng(0).integers(0, 17, (3, 1, 8, 8)).astype(np.uint8)
    np.save(tmp_path / "x.npy", image)
    said = [json.loads(subprocess.run([sys.executable, "-m", "cnnspec", "predict", str(tmp_path / run), str(tmp_path / "x.npy"), "--format", "json", "--top", "10"],
                                      capture_output=True, text=True, check=True, timeout=120).stdout) for run in ("plain", "softmax")]
    for a, b in zip(*said, strict=True):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)  # not a softmax of probabilities


def test_an_export_keeps_the_probabilities_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from cnnspec.porting.exporting import read_metadata

    cnnspec.train(parse_spec(SOFTMAX, "tiny.yaml"), "numpy", out=tmp_path / "run", quiet=True, **SETTINGS)  # type: ignore[arg-type]
    done = subprocess.run([sys.executable, "-m", "cnnspec", "export", str(tmp_path / "run"), "--to", "onnx", "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_metadata(tmp_path / "m.onnx")["cnnspec.outputs"] == "probabilities: the spec's output ends in softmax"
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((4, 1, 8, 8), np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_train_repeats_checks_warning_and_a_new_head_gives_logits(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SOFTMAX.replace("units: 10", "units: 4"))
    checked = subprocess.run([sys.executable, "-m", "cnnspec", "check", str(spec)], capture_output=True, text=True, timeout=120)
    trained = subprocess.run([sys.executable, "-m", "cnnspec", "train", str(spec), "--backend", "numpy", "--classes", "auto", "--epochs", "1",
                              "--set", "data.limit=100", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    warning = "dense 'out' ends in softmax, and the cross-entropy loss takes logits"
    assert warning in checked.stdout + checked.stderr
    assert warning in trained.stderr and f"{spec}:7:5: warning" in trained.stderr  # at the line, as check says it
    written = parse_spec((tmp_path / "run" / "spec.yaml").read_text(), "spec.yaml")
    assert written.output_shape == (10,) and getattr(written["out"].layer, "activation", None) is None
