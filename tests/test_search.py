"""Embeddings and similarity search: meaningful on real data, kept fresh by content hash,
refused when damaged, written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.search.index import Index, SearchError, normalized

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"

torch = pytest.importorskip("torch")


def test_exact_search_matches_brute_force_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnspec.search.index

    rng = np.random.default_rng(0)
    vectors, queries = rng.standard_normal((1000, 16)).astype(np.float32), rng.standard_normal((7, 16)).astype(np.float32)
    monkeypatch.setattr(cnnspec.search.index, "CHUNK", 97)  # many chunks: the running top-k must be right across them
    for metric in ("cosine", "l2"):
        stored = normalized(vectors) if metric == "cosine" else vectors
        index = Index(stored, np.zeros(1000, np.int64), np.zeros((1000, 16), np.uint8), [str(i) for i in range(1000)], {"metric": metric})
        scores, rows = index.search(queries, 5)
        if metric == "cosine":
            full = normalized(queries) @ stored.T
            expected = np.argsort(-full, axis=1)[:, :5]
            assert_agrees(scores, np.take_along_axis(full, expected, axis=1))
        else:
            full = ((queries[:, None] - stored[None]) ** 2).sum(-1)
            expected = np.argsort(full, axis=1)[:, :5]
            assert_agrees(scores, np.take_along_axis(full, expected, axis=1))
        np.testing.assert_array_equal(rows, expected)
    _, own = index.search(vectors[:5], 1, exclude_self=True)
    assert (own[:, 0] != np.arange(5)).all()


@pytest.mark.skipif(not MNIST.exists(), reason="the shared MNIST test set is not beside this checkout")
def test_mnist_embeddings_find_neighbours_of_the_same_digit(tmp_path: Path) -> None:
    """LeNet-5 trained on the first 8,000 MNIST test images; every image embedded at the
    input of its last dense layer; the 5 nearest of the 8,000 to each of the 2,000 held
    out agree with its label (by majority) at least 97% of the time."""
    torch.set_num_threads(2)
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=3, **{"data.source": str(MNIST)})
    report = cnnspec.embed(tmp_path / "run", str(MNIST), out=tmp_path / "mnist.index")
    index = report.index
    assert len(index) == 10_000 and index.meta["layer"] == "f6" and index.embeddings.shape == (10_000, 84)
    seen = Index(index.embeddings[:8000], index.labels[:8000], index.hashes[:8000], index.paths[:8000], index.meta)
    _, rows = seen.search(index.embeddings[8000:], 5)
    votes = seen.labels[rows]
    majority = np.array([np.bincount(row, minlength=10).argmax() for row in votes])
    agreement = float((majority == index.labels[8000:]).mean())
    assert agreement >= 0.97, agreement


def _photos(root: Path, count: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32)).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def test_update_embeds_only_what_changed_and_an_interrupted_write_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    photos = _photos(tmp_path / "photos")
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=1, classes="auto", **{"data.source": str(photos), "data.workers": 0})
    first = cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "x.index")
    assert (first.embedded, first.added) == (12, 12)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(photos / "a" / "01.png")  # changed
    (photos / "b" / "02.png").unlink()  # deleted
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(photos / "a" / "99.png")  # new
    update = cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "x.index", update=True)
    assert (update.embedded, update.added, update.changed, update.removed, update.kept) == (2, 1, 1, 1, 10)
    fresh = cnnspec.embed(tmp_path / "run", str(photos)).index
    assert update.index.paths == fresh.paths
    assert_agrees(update.index.embeddings, fresh.embeddings)
    before = (tmp_path / "x.index").read_bytes()

    import safetensors.numpy

    def dies_half_way(arrays: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half an index")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", dies_half_way)
    (photos / "b" / "04.png").unlink()
    with pytest.raises(KeyboardInterrupt):
        cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "x.index", update=True)
    monkeypatch.undo()
    assert (tmp_path / "x.index").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.index")] == []
    with pytest.raises(SearchError, match="written with layer 'f6', not 'f5'"):
        cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "x.index", update=True, layer="f5")


def test_similar_from_the_command_line_and_its_errors(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=1, classes="auto", **{"data.source": str(photos), "data.workers": 0})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)

    made = cli("embed", "run", "--data", "photos", "-o", "p.index")
    assert made.returncode == 0 and "p.index: 12 images; 84 values each from 'f6' (cosine, float32)" in made.stdout, made.stderr
    query = Path("photos") / "a" / "03.png"  # the index keeps paths as the data was named (relative here)
    found = cli("similar", "p.index", str(query), "-k", "3", "--format", "json")
    assert found.returncode == 0, found.stderr
    neighbours = json.loads(found.stdout)[0]["neighbours"]
    assert neighbours[0]["path"] == str(query) and neighbours[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert len(neighbours) == 3 and neighbours[0]["similarity"] >= neighbours[1]["similarity"] >= neighbours[2]["similarity"]
    table = cli("similar", "p.index", str(query), "-k", "2")
    assert table.returncode == 0 and f"1  1.0000  a  {query}" in table.stdout
    (tmp_path / "bad.png").write_bytes(b"")
    broken = cli("similar", "p.index", "bad.png")
    assert broken.returncode == 1 and "bad.png: cannot read image (empty file" in broken.stderr
    data = bytearray((tmp_path / "p.index").read_bytes())
    (tmp_path / "cut.index").write_bytes(bytes(data[: len(data) // 2]))
    data[-5] ^= 0xFF
    (tmp_path / "edited.index").write_bytes(bytes(data))
    for name, message in (("cut.index", "truncated or damaged"), ("edited.index", "was edited or damaged"), ("none.index", "no such index")):
        result = cli("similar", name, str(query))
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_contact_sheet_and_near_duplicate_groups(tmp_path: Path) -> None:
    from PIL import Image

    photos = _photos(tmp_path / "photos", count=8)
    copy = np.asarray(Image.open(photos / "a" / "01.png"))
    Image.fromarray(copy).save(photos / "b" / "copy-of-01.png")
    Image.fromarray(np.clip(copy.astype(int) + 1, 0, 255).astype(np.uint8)).save(photos / "b" / "brighter-01.png")
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=1, classes="auto", **{"data.source": str(photos), "data.workers": 0})
    cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "p.index")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)

    drawn = cli("similar", "p.index", str(photos / "a" / "01.png"), str(photos / "a" / "03.png"), "-k", "3", "--sheet", "sheet.png")
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (4 * 136 + 8, 2 * (128 + 52 + 8) + 8)
    groups = cli("similar", "p.index", "--duplicates", "--threshold", "0.999", "--format", "json")
    assert groups.returncode == 0, groups.stderr
    found = json.loads(groups.stdout)
    assert sorted(Path(p).name for p in found[0]) == ["01.png", "brighter-01.png", "copy-of-01.png"]
    assert all(len(group) >= 2 for group in found)


def _clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 64 fixed centres (as embeddings of a collection cluster); ``seed``
    draws other members of the same clusters."""
    centres = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    return normalized(centres[rng.integers(0, 64, count)] + 0.3 * rng.standard_normal((count, dim)).astype(np.float32))


def test_approximate_search_keeps_recall_and_is_checked_against_its_index(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    vectors = _clustered(20_000, 32)
    index = Index(vectors, np.zeros(len(vectors), np.int64), np.zeros((len(vectors), 16), np.uint8), [str(i) for i in range(len(vectors))],
                  {"metric": "cosine"})
    queries = _clustered(200, 32, seed=1)
    _, exact = index.search(queries, 10)
    index.build_approximate()
    scores, approximate = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= 0.95, recall
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    index.save(str(tmp_path / "v.index"))  # a str path, as a user types it, or a Path
    again = Index.load(str(tmp_path / "v.index"))
    np.testing.assert_array_equal(again.search(queries, 10)[1], approximate)
    np.testing.assert_array_equal(again.search(queries, 10, exact=True)[1], exact)
    side = tmp_path / "v.index.ivf"
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= 0xFF
    side.write_bytes(bytes(data))
    with pytest.raises(SearchError, match="does not match its index"):
        Index.load(tmp_path / "v.index")
    side.unlink()
    with pytest.raises(SearchError, match=r"approximate structure v\.index\.ivf is missing"):
        Index.load(tmp_path / "v.index")


def test_embed_builds_the_approximate_structure_on_request(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    photos = _photos(tmp_path / "photos", count=60)
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=1, classes="auto", **{"data.source": str(photos), "data.workers": 0})
    made = subprocess.run([sys.executable, "-m", "cnnspec", "embed", "run", "--data", "photos", "-o", "p.index", "--approximate"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert made.returncode == 0 and "approximate structure p.index.ivf" in made.stdout, made.stderr
    update = cnnspec.embed(tmp_path / "run", str(photos), out=tmp_path / "p.index", update=True)
    assert update.index.approximate is not None  # an update keeps it, rebuilt over the new rows
    _, rows, loaded = cnnspec.similar(tmp_path / "p.index", [photos / "a" / "01.png"], k=3)
    assert loaded.approximate is not None and Path(loaded.paths[rows[0][0]]).name == "01.png"
