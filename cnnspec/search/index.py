"""Embeddings and similarity search: embed a collection with a trained run, keep the index
fresh as files change, find the nearest images to a query.

An index is one safetensors file: ``embeddings`` (N x D, float32 or float16), ``labels``,
``hashes`` (N x 16 bytes, BLAKE2b of each image's content), and ``paths`` (UTF-8, one per
line, as bytes), with the run, checkpoint, layer, preprocessing and metric in its
metadata, and a checksum over every array, so a truncated or edited file is refused
rather than searched. It is written atomically: an interrupted write leaves the previous
index as it was.

Search is exact by default: the queries' dot products (cosine: of L2-normalised vectors)
or distances against the embeddings in chunks of rows, keeping the running k best, so
memory stays bounded by the chunk whatever the size of the index. A large index (from
200,000 images, or on request) also gets an approximate structure, a FAISS inverted file
saved beside it (``NAME.index.ivf``), which answers far faster at a small loss of recall.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.errors import CnnspecError

FORMAT = "cnnspec-index/1"
CHUNK = 65_536  # rows of the index compared with the queries at a time
APPROXIMATE_FROM = 200_000  # images from which `embed` builds an approximate structure unasked


class SearchError(CnnspecError, ValueError):
    """The index cannot be used as asked; the message says why."""


def content_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass
class Index:
    embeddings: np.ndarray  # N x D
    labels: np.ndarray  # N
    hashes: np.ndarray  # N x 16 uint8
    paths: list[str]
    meta: dict[str, str]  # run, checkpoint, layer, metric, classes (JSON), preprocessing (JSON), ...
    approximate: Any = None  # a FAISS inverted-file index over the embeddings, when built

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def classes(self) -> list[str]:
        classes: list[str] = json.loads(self.meta.get("classes", "[]"))
        return classes

    def __len__(self) -> int:
        return len(self.paths)

    def neighbours(self, queries: list[str], scores: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
        """``search``'s answer for named queries, as ``cnnspec similar --format json`` prints
        it: each neighbour's path, score (``similarity`` or ``distance``), class and label."""
        key, classes = ("similarity" if self.metric == "cosine" else "distance"), self.classes

        def name(label: int) -> str:  # its number where the index holds no names for it
            return classes[label] if 0 <= label < len(classes) else str(label)

        return [{"query": query, "neighbours": [{"path": self.paths[p], key: float(v), "class": name(int(self.labels[p])), "label": int(self.labels[p]), "row": int(p)}
                                                for v, p in zip(row_scores, row, strict=True)]}
                for query, row_scores, row in zip(queries, scores, rows, strict=True)]

    # ---- files --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """The index at ``path`` and, when built, its approximate structure beside it
        (``path`` + ``.ivf``), both written atomically; the index's metadata holds the
        structure's checksum, so a stale or damaged one is never used."""
        path = Path(path)
        from cnnspec.runs.files import atomic_write, save_arrays

        arrays = self._arrays()
        meta = {**self.meta, "format": FORMAT, "count": str(len(self)), "checksum": _checksum(arrays)}
        meta.pop("approximate_checksum", None)
        side = _beside(path)
        if self.approximate is not None:
            import faiss

            data = faiss.serialize_index(self.approximate).tobytes()
            meta["approximate_checksum"] = hashlib.blake2b(data, digest_size=16).hexdigest()
            atomic_write(side, lambda p: p.write_bytes(data))
        save_arrays(path, arrays, meta)
        if self.approximate is None:
            side.unlink(missing_ok=True)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "embeddings": np.ascontiguousarray(self.embeddings),
            "labels": self.labels.astype(np.int64),
            "hashes": self.hashes.astype(np.uint8),
            "paths": np.frombuffer("\n".join(self.paths).encode(), np.uint8),
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Index:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise SearchError(f"{path}: no such index (make one with `cnnspec embed RUN --data DIR -o {path}`)")
        try:
            with safe_open(str(path), framework="np") as stored:
                meta = dict(stored.metadata() or {})
                arrays = {name: stored.get_tensor(name) for name in stored.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise SearchError(f"{path}: not a readable index, truncated or damaged ({exc})") from None
        if meta.get("format") != FORMAT or set(arrays) != {"embeddings", "labels", "hashes", "paths"}:
            raise SearchError(f"{path}: not a cnnspec index (format {meta.get('format')!r})")
        if _checksum(arrays) != meta.get("checksum"):
            raise SearchError(f"{path}: its arrays do not match its checksum: the file was edited or damaged; embed again")
        paths = bytes(arrays["paths"]).decode().split("\n") if len(arrays["paths"]) else []
        if not (len(paths) == len(arrays["embeddings"]) == len(arrays["labels"]) == len(arrays["hashes"])):
            raise SearchError(f"{path}: its arrays disagree on the number of images")
        return cls(arrays["embeddings"], arrays["labels"], arrays["hashes"], paths, meta, _load_approximate(path, meta))

    # ---- search -------------------------------------------------------------------------

    def build_approximate(self, lists: int | None = None, probes: int | None = None, target_recall: float = 0.97) -> None:
        """An inverted-file structure (FAISS IVF-Flat): the embeddings clustered into
        ``lists`` cells (default 4 x sqrt(N)); a query scans its ``probes`` nearest cells.
        By default the fewest probes (from lists / 128, doubling) whose recall@10 against
        exact search reaches ``target_recall`` on 200 of the index's own vectors: the
        data decides how much must be read, not a constant."""
        try:
            import faiss
        except ImportError:
            raise SearchError("approximate search needs FAISS: pip install 'cnnspec[search]' (faiss-cpu)") from None
        vectors = np.ascontiguousarray(self.embeddings, np.float32)
        lists = lists or max(1, min(len(vectors) // 39, int(4 * np.sqrt(len(vectors)))))
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        quantizer = faiss.IndexFlatIP(vectors.shape[1]) if self.metric == "cosine" else faiss.IndexFlatL2(vectors.shape[1])
        structure = faiss.IndexIVFFlat(quantizer, vectors.shape[1], lists, metric)
        rng = np.random.default_rng(0)
        structure.train(vectors[rng.choice(len(vectors), min(len(vectors), 64 * lists), replace=False)])
        structure.add(vectors)
        if probes is None:
            self.approximate = None
            rows = rng.choice(len(vectors), min(len(vectors), 200), replace=False)
            sample, k = vectors[rows], min(10, len(vectors) - 1)
            # Each sample's neighbours other than itself (it would be found for free).
            truth = [set(t) - {row} for t, row in zip(self.search(sample, k + 1, exact=True)[1], rows, strict=True)]
            probes = max(1, lists // 128)
            while True:
                structure.nprobe = probes
                found = [set(f) - {row} for f, row in zip(structure.search(sample, k + 1)[1], rows, strict=True)]
                recall = np.mean([len(f & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])
                if recall >= target_recall or probes >= lists:
                    break
                probes = min(lists, 2 * probes)
        structure.nprobe = probes
        self.approximate = structure

    def search(self, queries: np.ndarray, k: int = 10, *, exclude_self: bool = False, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each M x k, best first: cosine similarity (higher is
        nearer) or Euclidean distance (lower is nearer). ``exclude_self`` leaves out a
        query's own row when the queries are the index's rows in order. With an
        approximate structure (and not ``exact``), it answers instead: far faster on a
        large index, and nearly always the same neighbours."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.embeddings.shape[1]:
            raise SearchError(f"queries have {queries.shape[1]} values, the index's embeddings {self.embeddings.shape[1]}")
        if self.metric == "cosine":
            queries = normalized(queries)
        if self.approximate is not None and not exact and not exclude_self:
            scores, rows = self.approximate.search(np.ascontiguousarray(queries), min(k, len(self)))
            if self.metric == "l2":
                scores = np.maximum(scores, 0.0)
            return scores.astype(np.float32), rows.astype(np.int64)
        k = min(k, len(self) - (1 if exclude_self else 0))
        best_scores = np.full((len(queries), 0), np.nan, np.float32)
        best_rows = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(self), CHUNK):
            block = np.asarray(self.embeddings[start : start + CHUNK], np.float32)
            scores = _scores(queries, block, self.metric)  # lower is better
            if exclude_self:
                rows = np.arange(len(queries))
                mine = (rows >= start) & (rows < start + len(block))
                scores[rows[mine], rows[mine] - start] = np.inf
            take = min(k, scores.shape[1])
            part = np.argpartition(scores, take - 1, axis=1)[:, :take]
            best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
            best_rows = np.concatenate([best_rows, part + start], axis=1)
            keep = np.argsort(best_scores, axis=1, kind="stable")[:, :k]
            best_scores, best_rows = np.take_along_axis(best_scores, keep, axis=1), np.take_along_axis(best_rows, keep, axis=1)
        if self.metric == "cosine":
            best_scores = -best_scores  # back to similarity
        return best_scores.astype(np.float32), best_rows


def _beside(path: Path) -> Path:
    return path.with_name(path.name + ".ivf")


def _load_approximate(path: Path, meta: dict[str, str]) -> Any:
    expected = meta.get("approximate_checksum")
    if expected is None:
        return None
    side = _beside(path)
    if not side.is_file():
        raise SearchError(f"{path}: its approximate structure {side.name} is missing; embed again, or remove the index")
    data = side.read_bytes()
    if hashlib.blake2b(data, digest_size=16).hexdigest() != expected:
        raise SearchError(f"{side}: does not match its index (edited, damaged, or from another index); embed again")
    try:
        import faiss
    except ImportError:
        raise SearchError(f"{path} has an approximate structure: pip install 'cnnspec[search]' (faiss-cpu) to search it") from None
    return faiss.deserialize_index(np.frombuffer(data, np.uint8))


def normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    result: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return result


def _scores(queries: np.ndarray, block: np.ndarray, metric: str) -> np.ndarray:
    """Lower is nearer: negative cosine similarity, or the squared Euclidean distance."""
    products: np.ndarray = queries @ block.T
    if metric == "cosine":
        return -products
    distances: np.ndarray = np.maximum((queries**2).sum(axis=1, keepdims=True) - 2 * products + (block**2).sum(axis=1)[None], 0.0)
    return distances


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


# ---- embedding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedReport:
    index: Index
    embedded: int  # images run through the network this time
    added: int
    changed: int
    removed: int
    kept: int
    skipped: list[str]


def default_layer(graph: Any) -> str:
    """The input of the last dense layer (the penultimate features), else the output."""
    from cnnspec.layers.core import Dense
    from cnnspec.spec.grammar import INPUT

    for node in reversed(graph.nodes):
        if isinstance(node.layer, Dense):
            source: str = node.inputs[0]
            return graph.output if source == INPUT else source
    output: str = graph.output
    return output


def embed(
    run: Path,
    data: str,
    open_session: Callable[..., Any],
    *,
    layer: str | None = None,
    metric: str = "cosine",
    dtype: str = "float32",
    previous: Index | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    approximate: bool | None = None,
    runtime: str = "backend",
    said: Callable[[str], None] | None = None,
) -> EmbedReport:
    """Embed every image of ``data`` with ``run``'s network at ``layer``. With
    ``previous`` (an index of the same run, layer and preprocessing), only new and changed
    images are embedded: the rest keep their rows, and deleted files drop out. ``runtime``
    chooses what computes the layer (``inference.engines.inference_engine``)."""
    from cnnspec.inference.engines import inference_engine, open_run_session
    from cnnspec.inference.features import check_layer, collection, layer_outputs
    from cnnspec.runs.loading import load_run

    loaded = load_run(run)
    layer = layer or default_layer(loaded.graph)
    check_layer(loaded, layer)
    if metric not in ("cosine", "l2"):
        raise SearchError(f"--metric {metric}: use cosine or l2")
    if dtype not in ("float32", "float16"):
        raise SearchError(f"--dtype {dtype}: use float32 or float16")
    items = collection(loaded, data)
    preprocessing = json.dumps(
        {"input": list(loaded.graph.input_shape), "fit": loaded.config.data.fit, "resize": loaded.config.data.resize,
         "normalization": [loaded.normalization.scale, list(loaded.normalization.mean), list(loaded.normalization.std)]}
    )
    meta = {"run": str(loaded.run.path.resolve()), "checkpoint": loaded.checkpoint.name, "layer": layer, "metric": metric, "dtype": dtype,
            "preprocessing": preprocessing, "classes": json.dumps(items.classes)}
    hashes = np.array([np.frombuffer(_safe_hash(items, i), np.uint8) for i in range(len(items.names))], np.uint8).reshape(-1, 16)
    reuse: dict[int, int] = {}  # position now -> row of the previous index
    new: set[int] = set()  # positions not in the previous index
    removed = 0
    if previous is not None:
        for key in ("run", "checkpoint", "layer", "metric", "preprocessing"):
            if previous.meta.get(key) != meta[key]:
                raise SearchError(
                    f"the index was written with {key} {previous.meta.get(key)!r}, not {meta[key]!r}: "
                    "an update must embed as the index did (write a new index instead)"
                )
        rows = {path: row for row, path in enumerate(previous.paths)}
        for position, name in enumerate(items.names):
            row = rows.get(name)
            if row is None:
                new.add(position)
            elif bytes(previous.hashes[row]) == bytes(hashes[position]):
                reuse[position] = row
        removed = len(set(rows) - set(items.names))
    todo = np.array([p for p in range(len(items.names)) if p not in reuse], np.int64)
    session, which = inference_engine(loaded, lambda: open_run_session(loaded, open_session, device), device, runtime, len(todo), (layer,))
    if said is not None:
        said(f"runtime: {which}")
    done = {"n": 0}

    def advance(count: int) -> None:
        done["n"] += count
        if progress is not None:
            progress(done["n"], len(todo))

    values, delivered = layer_outputs(session, loaded.normalization, items.images, layer, loaded.config.batch_size, todo, advance) if len(todo) else (None, np.zeros(0, np.int64))
    fresh = {} if values is None else {int(p): v.reshape(-1) for p, v in zip(delivered, values, strict=True)}
    if values is not None and metric == "cosine":
        fresh = {p: normalized(v[None])[0] for p, v in fresh.items()}
    kept_positions = [p for p in range(len(items.names)) if p in reuse or p in fresh]
    if not kept_positions:
        raise SearchError(f"no image of {data} could be embedded")
    storage = np.float16 if dtype == "float16" else np.float32
    old = previous.embeddings if previous is not None else np.zeros((0, 0), np.float32)  # rows reused only from a previous index
    embeddings = np.stack([fresh[p] if p in fresh else np.asarray(old[reuse[p]], np.float32) for p in kept_positions]).astype(storage)
    index = Index(embeddings, items.labels[kept_positions], hashes[kept_positions], [items.names[p] for p in kept_positions], meta)
    if approximate is None:  # keep what the index had; build one for large collections
        approximate = (previous is not None and previous.approximate is not None) or len(index) >= APPROXIMATE_FROM
    if approximate:
        index.build_approximate()
    skipped = [items.names[p] for p in todo if p not in fresh]  # unreadable: neither added nor changed, whatever the index held
    added = len(fresh) if previous is None else sum(p in new for p in fresh)
    changed = len(fresh) - added
    return EmbedReport(index, len(fresh), added, changed, removed, len(reuse), skipped)


def _safe_hash(items: Any, position: int) -> bytes:
    try:
        return content_hash(items.content(position))
    except OSError:
        return bytes(16)  # unreadable: it will be reported when decoding skips it


def embed_files(index: Index, files: list[Path], open_session: Callable[..., Any], device: str = "auto", runtime: str = "auto") -> np.ndarray:
    """Query images embedded exactly as the index's images were: its run's checkpoint,
    layer and preprocessing (on the engine ``embed`` built, where it did)."""
    from cnnspec.data.dataset import load_images
    from cnnspec.inference.engines import inference_engine, open_run_session
    from cnnspec.runs.loading import load_run

    run = Path(index.meta["run"])
    checkpoint = run / "checkpoints" / index.meta["checkpoint"]
    if not checkpoint.is_dir():
        raise SearchError(f"the index was embedded by {checkpoint}, which is gone: queries cannot be embedded the same way; embed again")
    loaded = load_run(checkpoint)
    layer = index.meta["layer"]
    session, _ = inference_engine(loaded, lambda: open_run_session(loaded, open_session, device), device, runtime, len(files), (layer,))
    data = loaded.config.data
    images = loaded.normalization.apply(load_images(files, loaded.graph.input_shape, data.fit, data.resize))
    values = np.asarray(session.activations(images, [layer])[layer], np.float32).reshape(len(files), -1)
    return normalized(values) if index.metric == "cosine" else values


def contact_sheet(queries: list[Path], scores: np.ndarray, rows: np.ndarray, index: Index, out: Path, thumb: int = 128) -> None:
    """One row per query: the query, then its neighbours, each captioned with its score
    and file name (an entry that is not a readable file is drawn as a grey tile)."""
    from PIL import Image, ImageDraw, ImageOps

    from cnnspec.runs.files import atomic_write

    name_lines = 3
    caption = 12 * (1 + name_lines) + 4
    columns = 1 + rows.shape[1]
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, len(queries) * (thumb + caption + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    name = "similarity" if index.metric == "cosine" else "distance"

    def tile(path: str, x: int, y: int, heading: str) -> None:
        try:
            with Image.open(path) as image:
                picture = ImageOps.contain(ImageOps.exif_transpose(image).convert("RGB"), (thumb, thumb))  # small ones enlarged too
        except (OSError, ValueError):
            picture = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        sheet.paste(picture, (x + (thumb - picture.width) // 2, y + (thumb - picture.height) // 2))
        lines = [heading, *caption_lines(_short(path), lambda text: draw.textlength(text), thumb, name_lines)]
        for number, line in enumerate(lines):
            draw.text((x, y + thumb + 2 + 12 * number), line, fill="black")

    for r, query in enumerate(queries):
        y = 8 + r * (thumb + caption + 8)
        tile(str(query), 8, y, "query")
        for c, (score, row) in enumerate(zip(scores[r], rows[r], strict=True), start=1):
            tile(index.paths[row], 8 + c * (thumb + 8), y, f"{name} {score:.3f}")
    atomic_write(out, lambda p: sheet.save(p, format="PNG"))


def caption_lines(text: str, width_of: Callable[[str], float], width: float, most: int) -> list[str]:
    """``text`` broken into at most ``most`` lines no wider than ``width``; what still does
    not fit is cut from the middle (marked "..."), so both the folder and the file's end
    (its number and suffix) stay readable."""
    def wrapped(text: str) -> list[str]:
        lines: list[str] = []
        while text:
            cut = len(text)
            while cut > 1 and width_of(text[:cut]) > width:
                cut -= 1
            lines.append(text[:cut])
            text = text[cut:]
        return lines

    lines = wrapped(text)
    if len(lines) <= most:
        return lines
    keep = len(text)
    while keep > 1:
        keep -= 1
        shortened = text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2 :]
        lines = wrapped(shortened)
        if len(lines) <= most:
            return lines
    return wrapped(text[:1])[:most]


def _short(path: str) -> str:
    """The file's name with its folder (the class, for class folders)."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def duplicate_groups(index: Index, threshold: float, k: int = 20) -> list[list[int]]:
    """Groups of rows whose cosine similarity to another member is at least
    ``threshold`` (connected components of the k-nearest-neighbour graph), largest first."""
    if index.metric != "cosine":
        raise SearchError("--duplicates needs a cosine index (embed with --metric cosine)")
    parent = list(range(len(index)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(index), 1024):
        block = np.asarray(index.embeddings[start : start + 1024], np.float32)
        scores, rows = index.search(block, k + 1)
        for offset, (row_scores, row_rows) in enumerate(zip(scores, rows, strict=True)):
            for score, other in zip(row_scores, row_rows, strict=True):
                if other != start + offset and score >= threshold:
                    parent[root(int(other))] = root(start + offset)
    groups: dict[int, list[int]] = {}
    for i in range(len(index)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)
