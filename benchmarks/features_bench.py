"""Alpha158 + LABEL0 on the demo market: cold computation, peak memory and cached reload.

For each market size (300 and 1,000 instruments over 2010-2020 by default) the demo
market is generated once (kept under ``--work``), then each measurement runs in a fresh
Python process so memory and caches do not carry over:

* ``cold``: ``load_features`` with an empty cache: read the CSVs, compute the 158
  features and the label, write the cache entry. Reported with its parts (data load,
  feature computation, cache write), the process's peak RSS (``ru_maxrss``; plus the
  largest forked feature worker's, whose sum bounds the total) and the CPU time of the
  computation (this process plus its forked feature workers): on a busy machine wall
  time exceeds it, on an idle one wall time is about CPU time / workers.
* ``reload``: ``load_features`` again in a new process, the entry already on disk: wall
  time of the call, and of the call plus a pass over every value (the entry is mapped
  copy-on-write, so the call itself reads lazily).

Goals (issue 3): 300 instruments < 10 s cold and < 1 s from the cache, 1,000 < 30 s
cold, peak memory < 2 GiB for 300. Qlib 0.9.7 needs ~42 s and ~157 s on this machine.

Usage: ``python benchmarks/features_bench.py [--n 300,1000] [--work DIR] [--repeat 1]``;
prints a table and writes ``benchmarks/results/features_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "features_bench.json"


def _child(mode: str, data: str, cache_dir: str) -> dict:
    import resource

    sys.path.insert(0, str(ROOT))
    import numpy as np

    from alphamill.data import open_data
    from alphamill.features import cache

    out: dict = {}
    if mode == "cold":
        parts = {}
        real_compute = cache.compute_table

        def timed_compute(src, exprs, names):
            t0 = time.perf_counter()
            panel = src.load("all")
            parts["load_s"] = time.perf_counter() - t0
            from alphamill.features import alpha158 as A

            def children_cpu() -> float:
                ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                return ru.ru_utime + ru.ru_stime

            t1 = time.perf_counter()
            c1, k1 = time.process_time(), children_cpu()
            table = A.evaluate(
                A.to_dense(panel), A.ALPHA158_EXPRESSIONS + exprs, A.ALPHA158_NAMES + names
            )
            parts["compute_s"] = time.perf_counter() - t1
            # CPU of this process plus that of the forked feature workers
            parts["compute_cpu_s"] = time.process_time() - c1 + children_cpu() - k1
            return table

        cache.compute_table = timed_compute
        src = open_data(data)
        t0 = time.perf_counter()
        c0 = time.process_time()
        df = cache.load_features(src, cache_dir=cache_dir)
        out["wall_s"] = time.perf_counter() - t0
        out["cpu_s"] = time.process_time() - c0
        out.update(parts)
        out["write_s"] = out["wall_s"] - parts["load_s"] - parts["compute_s"]
        out["rows"], out["cols"] = df.shape
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # forked feature workers (if any): their largest peak, and the two added as a bound
        out["workers_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out["peak_bound_mib"] = out["peak_rss_mib"] + out["workers_peak_rss_mib"]
        from alphamill.features.alpha158 import default_threads

        out["workers"] = default_threads()
        del real_compute
    else:
        src = open_data(data)
        t0 = time.perf_counter()
        df = cache.load_features(src, cache_dir=cache_dir)
        out["wall_s"] = time.perf_counter() - t0
        total = float(np.nansum(df.to_numpy(), dtype=np.float64))
        out["wall_touch_s"] = time.perf_counter() - t0
        out["checksum"] = total
        out["rows"], out["cols"] = df.shape
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run_child(mode: str, data: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--cache", str(cache_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _market(work: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from alphamill.data import generate_demo_market

    path = work / f"demo{n}"
    if not (path / "meta.json").is_file():
        t0 = time.perf_counter()
        generate_demo_market(path, n=n, start="2010-01-01", end="2020-12-31", seed=0)
        print(f"generated demo market n={n} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="300,1000", help="comma-separated instrument counts")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "alphamill_features_bench"))
    ap.add_argument("--repeat", type=int, default=1, help="cold runs per size (best is kept)")
    ap.add_argument("--child", choices=["cold", "reload"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.data, a.cache)))
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import shutil

    rows = []
    for n in [int(x) for x in a.n.split(",") if x.strip()]:
        market = _market(work, n)
        colds = []
        for r in range(max(1, a.repeat)):
            cache_dir = work / f"cache{n}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            c = _run_child("cold", market, cache_dir)
            c["loadavg_1m_before"] = load
            colds.append(c)
            print(f"n={n} cold run {r + 1}: {c['wall_s']:.2f} s", flush=True)
        cold = min(colds, key=lambda c: c["wall_s"])
        reload = _run_child("reload", market, work / f"cache{n}")
        rows.append({"instruments": n, "cold": cold, "cold_runs": colds, "reload": reload})
    header = (
        f"{'instr':>6} {'rows':>9} {'cold s':>7} {'load s':>7} {'compute s':>9} {'cpu s':>6} "
        f"{'write s':>7} {'peak MiB':>9} {'+workers':>8} {'reload s':>8} {'reload+read s':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        c, rl = r["cold"], r["reload"]
        print(
            f"{r['instruments']:>6} {c['rows']:>9} {c['wall_s']:>7.2f} {c['load_s']:>7.2f} "
            f"{c['compute_s']:>9.2f} {c['compute_cpu_s']:>6.2f} {c['write_s']:>7.2f} "
            f"{c['peak_rss_mib']:>9.0f} {c['workers_peak_rss_mib']:>8.0f} {rl['wall_s']:>8.3f} "
            f"{rl['wall_touch_s']:>13.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "features_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "loadavg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "goals": {"cold_300_s": 10, "reload_300_s": 1, "cold_1000_s": 30, "peak_300_mib": 2048},
        "results": rows,
    }
    RESULTS.write_text(json.dumps(payload, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
