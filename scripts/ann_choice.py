"""How recsys/retrieval.py's ANN index was chosen: build time, query time and recall of
the candidates libraries on 100,000 x 384 unit vectors, one core, top 100 per query.

    .venv/bin/python scripts/ann_choice.py [--n 100000]

The data is clustered Gaussian noise (2,000 centres), harder than real embeddings (whose
intrinsic dimension is lower): recall here is a lower bound; `streamrank bench` reports it on
a MovieLens-derived catalog. usearch is measured when installed (pip install usearch).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=400)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n, d, k = args.n, 384, 100
    centres = rng.standard_normal((2000, d)).astype(np.float32)
    x = centres[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, args.queries)] + 0.3 * rng.standard_normal(
        (args.queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = time.perf_counter()
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    print(f"exact top 10 of {n}: {(time.perf_counter() - t) / len(q) * 1000:.2f} ms/query")

    def report(name, build_s, search_one, ids):
        t0 = time.perf_counter()
        for row in q:
            search_one(row)
        per_query = (time.perf_counter() - t0) / len(q) * 1000
        recall = np.mean([len(set(exact[i]) & set(ids[i])) / 10 for i in range(len(q))])
        print(f"{name}: build {build_s:.1f} s, {per_query:.3f} ms/query, "
              f"recall@10 in top {k} {recall:.4f}")

    for m in (16, 32):
        idx = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 100
        t = time.perf_counter()
        idx.add(x)
        build = time.perf_counter() - t
        idx.hnsw.efSearch = 128
        report(f"faiss HNSW M={m} ef=128", build, lambda r: idx.search(r[None], k),
               idx.search(q, k)[1])
    for nlist, nprobe in ((int(4 * np.sqrt(n)), 32), (1024, 32)):
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        ivf.train(x[rng.choice(n, min(n, nlist * 40), replace=False)])
        ivf.add(x)
        build = time.perf_counter() - t
        ivf.nprobe = nprobe
        report(f"faiss IVF-Flat nlist={nlist} nprobe={nprobe}", build,
               lambda r: ivf.search(r[None], k), ivf.search(q, k)[1])
    try:
        from usearch.index import Index
    except ImportError:
        print("usearch: not installed, skipped")
        return
    u = Index(ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=80,
              expansion_search=128)
    t = time.perf_counter()
    u.add(np.arange(n), x, threads=1)
    build = time.perf_counter() - t
    report("usearch HNSW conn=16 ef=128", build, lambda r: u.search(r, k, threads=1),
           np.stack([u.search(r, k).keys for r in q]))


if __name__ == "__main__":
    main()
