"""Vector stores: ingestion speed, search latency and recall of the usearch index against
exact search, and retrieval quality on questions about ownllm's own docs.

Four parts, in one run:
- **ingestion**: README.md and DESIGN.md (the `shared/` copy beside the repo, when there)
  uploaded, attached and ingested by the real worker (`Ingester`, SQLite, the shipped
  all-MiniLM-L6-v2): chunks/s over the worker's wall time (model already loaded), and the
  share of it spent in `embed`.
- **hit rate@5**: `QUESTIONS` below, each with a phrase its answer's chunk contains,
  searched through `ownllm.vectors.search` over that store, once with the exact-search
  path and once with the usearch graph forced (`exact_max_chunks=0`). A hit: a chunk
  holding the phrase is among the first five.
- **scale**: `--sizes` chunks (default 10k and 100k) written to the database and loaded
  by the store index as a server does. Real MiniLM vectors at 100k would take hours of
  embedding on this CPU, so the vectors are drawn from a Gaussian with the mean and
  covariance of the real chunk vectors of the ingestion part (shrunk towards isotropic,
  so it has full rank), normalised: the spread of real MiniLM vectors, not their
  clusters. The queries are 200 more draws. `--isotropic` draws uniform unit vectors
  instead: the worst case for a graph index (no low-dimensional structure at all).
  Reported: the graph's build time, search latency p50/p99 of the whole
  `ownllm.vectors.search` call (completed files, index, chunk texts) with the graph and
  with exact search over the same index, and recall@10 of the graph against exact search.

    python -m bench.vector_store [--sizes 10000,100000] [--queries 200] [--isotropic]
           [--expansion-search N]

Prints the CPU flags and the load average: the box is shared, and its neighbours' load
moves every latency here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT.parent / "shared" / "DESIGN.md"]

# (question, a phrase of the passage that answers it)
QUESTIONS = [
    ("How do I start the server and run the tests?", "make serve"),
    ("Which model ships with ownllm for chat?", "SmolLM2-135M-Instruct"),
    ("Which embedding model is shipped and how many dimensions?", "384 dimensions"),
    ("How do I fine-tune a model with my own chat data?", "fine_tuned_model"),
    ("How do I set LoRA rank and alpha for a fine-tuning job?", '"alpha": 32'),
    ("What does the server do without an API key on localhost?", "the server is open"),
    ("How are API keys stored?", "SHA-256"),
    ("Which detectors does the guard policy have?", "Luhn"),
    ("What happens when the output guard blocks a completion?", "content_filter"),
    ("In what format are LoRA adapters stored?", "adapter_model.safetensors"),
    ("Which graders do evals support?", "string_check"),
    ("Which attacks does the red-teaming suite probe?", "OWASP"),
    ("How do I promote a new model version and roll back?", "alias"),
    ("Where does ownllm keep its data on disk?", "OWNLLM_HOME"),
    ("How do I use PostgreSQL instead of SQLite?", "OWNLLM_DATABASE_URL"),
    ("How do I run vLLM on a GPU node behind the gateway?", "vLLM"),
    ("Can I send some requests to a paid API?", "hybrid"),
    ("How are monthly token budgets and rate limits set on a key?", "rpm"),
    ("What does the dashboard show?", "Dashboard"),
    ("Which layers may import which?", "a layer imports only layers below it"),
    ("How are background jobs like fine-tuning claimed by workers?", "SKIP LOCKED"),
    ("Does ownllm need the internet at runtime?", "Offline"),
]


def cpu_flags() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    words = set(info.split())
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    have = [f for f in ("avx512_bf16", "avx512f", "avx2") if f in words]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(have) or 'none of avx2/avx512'}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class TimedEmbedder:
    """The shipped model, counting the seconds spent in `embed`."""

    def __init__(self, model) -> None:
        self.model, self.dimensions, self.seconds = model, model.dimensions, 0.0

    def token_spans(self, text: str):
        return self.model.token_spans(text)

    def embed(self, texts):
        start = time.perf_counter()
        try:
            return self.model.embed(texts)
        finally:
            self.seconds += time.perf_counter() - start


def open_db(tmp: Path):
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database

    return Database.open(f"sqlite:///{tmp / 'bench.db'}"), DataDir(tmp).ensure()


def new_store(db, principal, name: str):
    from ownllm.vectors import stores

    return stores.create_store(
        db, principal, name=name, description=None, metadata=None, expires_after=None,
        embedding_model="all-minilm-l6-v2",
    )  # fmt: skip


def ingestion(db, data_dir, principal, model):
    """Ingest the docs; (store, chunk vectors, report lines)."""
    from ownllm.store.schema import VectorStore, VectorStoreChunk
    from ownllm.tuning.files import save_bytes
    from ownllm.vectors import stores
    from ownllm.vectors.chunking import AUTO
    from ownllm.vectors.ingest import Ingester

    store = new_store(db, principal, "docs")
    docs = [p for p in DOCS if p.exists()]
    for path in docs:
        f = save_bytes(
            db, data_dir, [path.read_bytes()], tenant_id=principal.tenant_id,
            filename=path.name, purpose="assistants",
        )  # fmt: skip
        stores.attach_files(db, principal, store, [(f.id, AUTO, None)])
    embedder = TimedEmbedder(model)
    worker = Ingester(db, data_dir, lambda: embedder)
    start = time.perf_counter()
    while worker.run_once():
        pass
    wall = time.perf_counter() - start
    with db.session() as s:
        store = s.get(VectorStore, store.id)
        vectors = [
            np.frombuffer(v, "<f4")
            for v in s.scalars(
                VectorStoreChunk.__table__.select()
                .with_only_columns(VectorStoreChunk.vector)
                .where(VectorStoreChunk.vector_store_id == store.id)
            )
        ]
    n = len(vectors)
    lines = [
        f"ingestion: {', '.join(p.name for p in docs)} -> {n} chunks (auto: 256 tokens, 64 "
        f"overlap) in {wall:.1f} s = {n / wall:.1f} chunks/s; embedding {embedder.seconds:.1f} s"
        f" = {100 * embedder.seconds / wall:.0f}% of it (load {load()})"
    ]
    return store, np.stack(vectors), lines


def hit_rate(db, store, model, dims: int) -> list[str]:
    from ownllm.store.schema import VectorStoreChunk
    from ownllm.vectors.index import IndexCache
    from ownllm.vectors.search import search

    with db.session() as s:
        texts = list(
            s.scalars(
                VectorStoreChunk.__table__.select()
                .with_only_columns(VectorStoreChunk.text)
                .where(VectorStoreChunk.vector_store_id == store.id)
            )
        )
    asked = [(q, p) for q, p in QUESTIONS if any(p in t for t in texts)]
    dropped = len(QUESTIONS) - len(asked)
    vectors = model.embed([q for q, _ in asked])
    lines = []
    for label, cache in (("exact", IndexCache()), ("usearch", IndexCache(exact_max_chunks=0))):
        hits = 0
        for (_, phrase), vector in zip(asked, vectors):
            found = search(db, cache, [store], [vector], max_num_results=5, dimensions=dims)
            hits += any(phrase in h.text for h in found)
        lines.append(f"hit rate@5 {label}: {hits}/{len(asked)} = {hits / len(asked):.2f}")
    if dropped:
        lines.append(f"({dropped} questions left out: their phrase is in no chunk any more)")
    return lines


def draw(rng, n: int, mean, factor, dims: int, isotropic: bool) -> np.ndarray:
    if isotropic:
        v = rng.standard_normal((n, dims), dtype=np.float32)
    else:
        v = mean + rng.standard_normal((n, dims), dtype=np.float32) @ factor
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_chunks(db, store, vectors: np.ndarray) -> None:
    """Chunks of one completed file, as ingestion leaves them."""
    from sqlalchemy import insert

    from ownllm.store.schema import VectorStoreChunk, VectorStoreFile

    file_id = f"file-{store.id}"
    with db.session() as s:
        s.add(
            VectorStoreFile(
                vector_store_id=store.id, file_id=file_id, tenant_id=store.tenant_id,
                key_id=None, batch_id=None, status="completed", last_error=None,
                chunking={"max_chunk_size_tokens": 256, "chunk_overlap_tokens": 64},
                attributes=None, usage_bytes=0, num_chunks=len(vectors), num_tokens=0,
                created_at=int(time.time()), seq=int(time.time() * 1e6), attempts=0,
            )
        )  # fmt: skip
        for start in range(0, len(vectors), 5000):
            s.execute(
                insert(VectorStoreChunk),
                [
                    {
                        "vector_store_id": store.id, "file_id": file_id,
                        "tenant_id": store.tenant_id, "seq": i, "text": f"chunk {i}",
                        "num_tokens": 256, "vector": np.asarray(v, "<f4").tobytes(),
                    }
                    for i, v in enumerate(vectors[start : start + 5000], start)
                ],
            )  # fmt: skip


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def scale(db, principal, size: int, args, mean, factor, dims: int) -> list[str]:
    from ownllm.store.schema import VectorStore
    from ownllm.vectors.index import IndexCache, exact_search
    from ownllm.vectors.search import search

    rng = np.random.default_rng(size)
    store = new_store(db, principal, f"synthetic-{size}")
    write_chunks(db, store, draw(rng, size, mean, factor, dims, args.isotropic))
    queries = draw(rng, args.queries, mean, factor, dims, args.isotropic)

    with db.session() as s:
        store = s.get(VectorStore, store.id)
    start = time.perf_counter()
    ann_cache = IndexCache(exact_max_chunks=0)
    index = ann_cache.get(db, store, dims)
    build = time.perf_counter() - start
    if args.expansion_search:
        index.ann.expansion_search = args.expansion_search
    exact_cache = IndexCache(exact_max_chunks=size + 1)
    exact_cache.get(db, store, dims)
    out = {}
    for label, cache in (("usearch", ann_cache), ("exact", exact_cache)):
        times = []
        for q in queries:
            t = time.perf_counter()
            search(db, cache, [store], [q.tolist()], max_num_results=10, dimensions=dims)
            times.append(time.perf_counter() - t)
        out[label] = times
    recall = []
    for q in queries:
        want = set(exact_search(index.vectors, q, 10)[0].tolist())
        got = index.ann.search(q, 10).keys.tolist()
        recall.append(len(want & set(got)) / 10)
    ann = index.ann
    return [
        f"{size:>7} chunks ({'isotropic' if args.isotropic else 'MiniLM-like'}): usearch "
        f"connectivity {ann.connectivity}, expansion_add {ann.expansion_add}, expansion_search "
        f"{ann.expansion_search}; built in {build:.1f} s (load {load()})",
        f"         search p50/p99 ms: usearch {percentile(out['usearch'], 50):.2f} / "
        f"{percentile(out['usearch'], 99):.2f}, exact {percentile(out['exact'], 50):.2f} / "
        f"{percentile(out['exact'], 99):.2f}; recall@10 usearch vs exact "
        f"{np.mean(recall):.3f} (min {min(recall):.1f}); "
        f"a server's path at this size: "
        f"{'usearch' if size > IndexCache().exact_max_chunks else 'exact'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--isotropic", action="store_true")
    parser.add_argument("--expansion-search", type=int, default=0)
    parser.add_argument("--skip-docs", action="store_true", help="no ingestion or hit rate")
    args = parser.parse_args()

    from ownllm.gateway.principal import Principal
    from ownllm.models.embedding import EmbeddingModel

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# bench/vector_store.py at {commit}; {cpu_flags()}; load {load()}", flush=True)
    principal = Principal(tenant_id="acme")
    with tempfile.TemporaryDirectory() as tmp:
        db, data_dir = open_db(Path(tmp))
        model = EmbeddingModel.load()
        dims = model.dimensions
        store, real, lines = ingestion(db, data_dir, principal, model)
        print("\n".join(lines), flush=True)
        if not args.skip_docs:
            print("\n".join(hit_rate(db, store, model, dims)), flush=True)
        mean = real.mean(0)
        cov = np.cov(real, rowvar=False)
        cov = 0.9 * cov + 0.1 * np.trace(cov) / dims * np.eye(dims)
        factor = np.linalg.cholesky(cov).T.astype(np.float32)
        sample = draw(np.random.default_rng(0), len(real), mean, factor, dims, args.isotropic)
        print(
            f"mean cosine between two chunks: real {float((real @ real.T).mean()):.3f}, "
            f"drawn {float((sample @ sample.T).mean()):.3f}",
            flush=True,
        )
        for size in (int(s) for s in args.sizes.split(",")):
            print("\n".join(scale(db, principal, size, args, mean, factor, dims)), flush=True)
        db.close()


if __name__ == "__main__":
    main()
