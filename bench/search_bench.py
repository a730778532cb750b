"""Gallery search benchmark: upgrader.runtime.index.GallerySearch (flat, HNSW), raw and calibrated, vs numpy.

For each gallery size: top-k single-query latency (p50 / p99) and batch throughput (queries/s) of

* ``numpy``  — ``gallery @ query`` + ``argpartition`` + sort of the k best (the obvious baseline),
* ``flat``   — today's search: one exact FAISS index (faiss.IndexFlatIP) over every row, raw cosine,
* ``flat_mixed`` — the same rows written by ``--generations`` generations (default 4), in one shard
  per generation as the server holds them, raw cosine,
* ``flat_calibrated`` — that index searched with a score map per older generation (issue 15: the
  calibration serving applies); its results are checked against brute-force mapped scores and its
  p50 is reported against today's (target: within 1.3x),
* ``hnsw``   — GallerySearch(index="hnsw"), approximate, one build, timed at each ``--ef-search`` with
  its measured recall@k against flat, raw and calibrated,

plus build times and ratios against numpy. Data: float32, L2-normalised, half uniform on the sphere and
half around a few cluster centres; queries are half perturbed gallery items, half random.

    .venv/bin/python bench/search_bench.py                       # 100k and 1M, dim 127; HNSW at 100k only
    .venv/bin/python bench/search_bench.py --hnsw-max-size 0     # HNSW at 1M too (its build: ~15 min)
    .venv/bin/python bench/search_bench.py --sizes 20000 --queries 100

Besides single queries and one large batch, ``small_batch_qps`` times batches of ``--small-batch``
queries (what a server that batches concurrent requests sends). Threads default to 1 (see
upgrader.runtime.index: OpenMP counts are per thread, and extra threads spin on a loaded machine).

Prints a table and writes JSON (default bench/results/search_bench.json). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _pin_numpy_threads(argv: list[str]) -> None:
    """Give numpy's OpenBLAS the same thread count as FAISS (``--threads``), so the side-by-side is fair.

    OpenBLAS reads its thread count when numpy is first imported, hence before ``import numpy``; an
    explicit OPENBLAS_NUM_THREADS in the environment wins.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=1)
    known, _ = pre.parse_known_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, known.threads)))


_pin_numpy_threads(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from search_helpers import bench_score_maps, calibrated_topk, measure_recall, set_threads  # noqa: E402
from upgrader.runtime.index import GallerySearch  # noqa: E402


def make_data(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """n L2-normalised float32 rows: half uniform on the sphere, half around ``clusters`` centres."""
    out = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    chunk = 100_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        clustered = rng.random(m) < 0.5
        which = rng.integers(0, clusters, int(clustered.sum()))
        x[clustered] = centres[which] * 3.0 + x[clustered] * (1.0 / np.sqrt(dim)) * 3.0
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def make_queries(gallery: np.ndarray, nq: int, rng: np.random.Generator) -> np.ndarray:
    dim = gallery.shape[1]
    half = nq // 2
    near = gallery[rng.integers(0, gallery.shape[0], half)] + 0.05 * rng.standard_normal((half, dim))
    rand = rng.standard_normal((nq - half, dim))
    q = np.vstack([near, rand]).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by matmul + argpartition (chunks of queries bound the score matrix's memory)."""
    nq = queries.shape[0]
    scores = np.empty((nq, k), dtype=np.float32)
    idx = np.empty((nq, k), dtype=np.int64)
    for s in range(0, nq, chunk):
        sc = queries[s : s + chunk] @ gallery.T  # [c, N]
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sc, part, axis=1)
        order = np.argsort(-ps, axis=1)
        idx[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        scores[s : s + chunk] = np.take_along_axis(ps, order, axis=1)
    return scores, idx


def latency(fn: Callable[[np.ndarray], Any], queries: np.ndarray, warmup: int = 3) -> dict[str, float]:
    for i in range(min(warmup, queries.shape[0])):
        fn(queries[i : i + 1])
    times = []
    for i in range(queries.shape[0]):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def interleaved_latency(fns: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray) -> dict[str, dict[str, float]]:
    """Single-query latency of several functions, alternating between them query by query."""
    for fn in fns.values():
        for i in range(min(3, queries.shape[0])):
            fn(queries[i : i + 1])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(queries.shape[0]):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(queries[i : i + 1])
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        ms = np.array(ts) * 1e3
        out[name] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean())}
    return out


def interleaved_best(measure: Callable[[Callable[[np.ndarray], Any]], float],
                     fns: dict[str, Callable[[np.ndarray], Any]], rounds: int) -> dict[str, float]:
    """Best of ``rounds`` of ``measure(fn)`` per function, the functions alternating round by round."""
    best = {name: 0.0 for name in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            best[name] = max(best[name], measure(fn))
    return best


def throughput(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    fn(queries[: min(8, len(queries))])  # warm-up
    t0 = time.perf_counter()
    fn(queries)
    return queries.shape[0] / (time.perf_counter() - t0)


def small_batch_qps(fn: Callable[[np.ndarray], Any], queries: np.ndarray, size: int) -> float:
    """Queries/s when ``queries`` arrive in batches of ``size`` (one call per batch)."""
    fn(queries[:size])  # warm-up
    t0 = time.perf_counter()
    done = 0
    for s in range(0, queries.shape[0], size):
        fn(queries[s : s + size])
        done += queries[s : s + size].shape[0]
    return done / (time.perf_counter() - t0)


def bench_size(n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    k = args.k
    t0 = time.perf_counter()
    gallery = make_data(n, args.dim, args.clusters, rng)
    single_q = make_queries(gallery, args.queries, rng)
    batch_q = make_queries(gallery, args.batch, rng)
    print(f"\n== {n:,} items, dim {args.dim} (data {time.perf_counter() - t0:.1f}s)", flush=True)
    ids = [f"x{i}" for i in range(n)]
    rows = np.arange(1, n + 1)
    gens = (np.arange(n) % args.generations) + 1  # a mixed gallery: every generation wrote a share
    maps = bench_score_maps(args.generations, np.random.default_rng(args.seed + 1))
    res: dict[str, Any] = {"size": n, "dim": args.dim, "k": k, "generations": args.generations}

    sb = args.small_batch

    # "flat" is today's search: one FAISS index over every row, raw cosine (before calibrated search,
    # a gallery of any number of generations was one index). "flat_mixed" holds the same rows in one
    # shard per generation, raw; "flat_calibrated" searches it with a score map per older generation.
    # All are measured interleaved (query by query, round by round) with the numpy baseline, so load
    # from other processes on a shared machine hits every side alike and the ratios stay meaningful.
    t0 = time.perf_counter()
    flat = GallerySearch(args.dim, threads=args.threads)
    flat.add(rows, ids, np.ones(n, np.int64), None, gallery)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    mixed = GallerySearch(args.dim, threads=args.threads)
    mixed.add(rows, ids, gens, None, gallery)
    build_mixed = time.perf_counter() - t0
    fns: dict[str, Callable[[np.ndarray], Any]] = {
        "numpy": lambda q: numpy_topk(gallery, q, k),
        "flat": lambda q: flat.search_arrays(q, k),
        "flat_mixed": lambda q: mixed.search_arrays(q, k),
        "flat_calibrated": lambda q: mixed.search_arrays(q, k, maps),
    }
    lats = interleaved_latency(fns, single_q)
    qpss = interleaved_best(lambda fn: throughput(fn, batch_q), fns, args.rounds)
    sqpss = interleaved_best(lambda fn: small_batch_qps(fn, batch_q, sb), fns, args.rounds)
    hits_lat = latency(lambda q: flat.search(q, k), single_q[: min(100, len(single_q))])
    check = batch_q[:200]
    _, ref_idx = numpy_topk(gallery, check, k)
    ref_cal = calibrated_topk(gallery, gens, maps, check, k)
    agree = {
        "flat": float(np.mean(flat.row_ids_at(flat.search_arrays(check, k)[1]) - 1 == ref_idx)),
        "flat_mixed": float(np.mean(mixed.row_ids_at(mixed.search_arrays(check, k)[1]) - 1 == ref_idx)),
        "flat_calibrated": float(np.mean(mixed.row_ids_at(mixed.search_arrays(check, k, maps)[1]) - 1 == ref_cal)),
    }
    res["numpy"] = {**lats["numpy"], "qps": qpss["numpy"], "small_batch_qps": sqpss["numpy"], "build_s": 0.0}
    for name, built in (("flat", build), ("flat_mixed", build_mixed), ("flat_calibrated", build_mixed)):
        res[name] = {**lats[name], "qps": qpss[name], "small_batch_qps": sqpss[name], "build_s": built,
                     "agreement_with_numpy": agree[name]}
    res["flat"]["hits_p50_ms"] = hits_lat["p50_ms"]
    for name in fns:
        r = res[name]
        print(f"{name:16s} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  {r['qps']:10.1f} q/s  "
              f"(batches of {sb}: {r['small_batch_qps']:.1f} q/s)", flush=True)
    print(f"flat   build {build:.1f}s, in {args.generations} shards {build_mixed:.1f}s  (Hit objects p50 "
          f"{hits_lat['p50_ms']:.3f} ms; same ids as numpy: {agree['flat']:.4f}, calibrated as brute force: "
          f"{agree['flat_calibrated']:.4f})", flush=True)
    today = res["flat"]
    res["calibration"] = {
        "generations": args.generations,
        "score_maps": {str(g): {"scale": a, "shift": b} for g, (a, b) in maps.items()},
        "p50_ratio_vs_today": res["flat_calibrated"]["p50_ms"] / today["p50_ms"],
        "p50_ratio_raw_shards_vs_today": res["flat_mixed"]["p50_ms"] / today["p50_ms"],
        "p99_ratio_vs_today": res["flat_calibrated"]["p99_ms"] / today["p99_ms"],
        "qps_ratio_vs_today": res["flat_calibrated"]["qps"] / today["qps"],
        "small_batch_qps_ratio_vs_today": res["flat_calibrated"]["small_batch_qps"] / today["small_batch_qps"],
        "target_p50_ratio": 1.3,
    }
    res["calibration"]["p50_target_met"] = res["calibration"]["p50_ratio_vs_today"] <= 1.3
    c = res["calibration"]
    print(f"calibrated vs today: single-query p50 x{c['p50_ratio_vs_today']:.3f} (target <= 1.3: "
          f"{'met' if c['p50_target_met'] else 'NOT met'}), raw in shards x{c['p50_ratio_raw_shards_vs_today']:.3f}, "
          f"batch q/s x{c['qps_ratio_vs_today']:.3f}, batches of {sb} x{c['small_batch_qps_ratio_vs_today']:.3f}",
          flush=True)
    del flat

    # HNSW, in one graph per generation like the server's index
    if args.hnsw_max_size and n > args.hnsw_max_size:
        res["hnsw_by_ef"] = {}
        print("hnsw   skipped (--hnsw-max-size)")
    else:
        efs = [int(e) for e in args.ef_search.split(",") if e.strip()]
        t0 = time.perf_counter()
        hnsw = GallerySearch(args.dim, index="hnsw", hnsw_m=args.hnsw_m, threads=args.build_threads,
                             ef_construction=args.ef_construction, ef_search=efs[0])
        hnsw.add(rows, ids, gens, None, gallery)
        build = time.perf_counter() - t0
        hnsw.threads = args.threads  # build on --build-threads, search like flat
        print(f"hnsw   build {build:.1f}s (M {args.hnsw_m}, efConstruction {args.ef_construction}, "
              f"{args.generations} shards)", flush=True)
        res["hnsw_by_ef"] = {}
        for ef in efs:
            hnsw.ef_search = ef  # read at every search
            lat = interleaved_latency({"raw": lambda q: hnsw.search_arrays(q, k),
                                       "calibrated": lambda q: hnsw.search_arrays(q, k, maps)}, single_q)
            qps = throughput(lambda q: hnsw.search_arrays(q, k), batch_q)
            sqps = small_batch_qps(lambda q: hnsw.search_arrays(q, k), batch_q, sb)
            recall = measure_recall(hnsw, mixed, batch_q, k)
            recall_cal = measure_recall(hnsw, mixed, batch_q, k, maps)
            # Queries near a gallery item have real neighbours; random queries in 127-d have none
            # (the top-k are near-equidistant), which is the worst case for any graph index.
            half = batch_q.shape[0] // 2
            recall_near = measure_recall(hnsw, mixed, batch_q[:half], k)
            recall_random = measure_recall(hnsw, mixed, batch_q[half:], k)
            res["hnsw_by_ef"][str(ef)] = {**lat["raw"], "qps": qps, "small_batch_qps": sqps, "build_s": build,
                                          f"recall_at_{k}": recall,
                                          f"recall_at_{k}_near_queries": recall_near,
                                          f"recall_at_{k}_random_queries": recall_random,
                                          "calibrated_p50_ms": lat["calibrated"]["p50_ms"],
                                          f"calibrated_recall_at_{k}": recall_cal,
                                          "m": args.hnsw_m, "ef_construction": args.ef_construction,
                                          "ef_search": ef}
            print(f"hnsw   p50 {lat['raw']['p50_ms']:8.3f} ms  p99 {lat['raw']['p99_ms']:8.3f} ms  {qps:10.1f} q/s  "
                  f"efSearch {ef:4d}  recall@{k} {recall:.4f} (near {recall_near:.4f}, random {recall_random:.4f}); "
                  f"calibrated p50 {lat['calibrated']['p50_ms']:.3f} ms, recall@{k} {recall_cal:.4f}", flush=True)
        del hnsw

    base = res["numpy"]
    compared = {name: res[name] for name in ("flat", "flat_mixed", "flat_calibrated")}
    compared.update({f"hnsw(ef={ef})": r for ef, r in res["hnsw_by_ef"].items()})
    res["ratios_vs_numpy"] = {
        name: {"p50_speedup": base["p50_ms"] / r["p50_ms"], "qps_speedup": r["qps"] / base["qps"],
               "small_batch_qps_speedup": r["small_batch_qps"] / base["small_batch_qps"]}
        for name, r in compared.items()
    }
    for name, r in res["ratios_vs_numpy"].items():
        print(f"{name:16s} vs numpy: single-query p50 x{r['p50_speedup']:.2f}, batch q/s x{r['qps_speedup']:.2f}, "
              f"batches of {sb} x{r['small_batch_qps_speedup']:.2f}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated gallery sizes")
    p.add_argument("--dim", type=int, default=127, help="embedding dimension (K - 1)")
    p.add_argument("--queries", type=int, default=200, help="single queries timed one by one")
    p.add_argument("--batch", type=int, default=1000, help="queries in the throughput batch")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--generations", type=int, default=4,
                   help="gallery generations (calibrated: every one but the newest is mapped)")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", default="64,128,256", help="comma-separated HNSW efSearch values")
    p.add_argument("--hnsw-max-size", type=int, default=100_000,
                   help="skip HNSW above this size (0: never skip; HNSW at 1M builds for ~15 min on 2 cores)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (alternating numpy / flat; best kept)")
    p.add_argument("--small-batch", type=int, default=8, help="queries per call in the small-batch throughput")
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads per search (GallerySearch threads=)")
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="FAISS threads for the HNSW build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "search_bench.json"))
    args = p.parse_args(argv)

    set_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    load_before = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for n in sizes:
        results.append(bench_size(n, args, rng))
        # Rewritten after every size, so a long run that is stopped still leaves what it measured.
        report = {
            "benchmark": "gallery top-k search",
            "machine": {"python": platform.python_version(), "numpy": np.__version__,
                        "faiss": faiss.__version__, "cpus": os.cpu_count(), "faiss_threads": args.threads,
                        "faiss_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
                        "platform": platform.platform(),
                        "blas_threads_env": {v: os.environ.get(v) for v in
                                             ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                        # other work on the machine skews timings; the load average shows how much
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "args": vars(args),
            "results": results,
        }
        out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
