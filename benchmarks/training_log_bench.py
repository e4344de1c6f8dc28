"""What the training log costs a flagship window: the train-set curve and the MLflow metrics.

Since LGBModel records Qlib's ``l2.train`` curve, LightGBM evaluates the training set every
round besides ``valid``; after the fit, both curves go to the experiment store. This measures,
on a window of the flagship's shape (Alpha158's 158 float32 features, 300 instruments x 5
years of training rows, 1 year of validation rows, Qlib's benchmark hyper-parameters from
``FLAGSHIP_LGB``, no early stopping so both runs do the same rounds):

* ``fit_valid_only_s`` / ``fit_with_train_s``: ``lightgbm.train`` evaluating ``valid`` only
  (before) and ``train`` + ``valid`` (now); the best of ``--repeat`` runs each, interleaved;
  ``*_cpu_s`` the same in CPU seconds of this process (steadier on a shared machine);
* ``curves_batched_s``: ``record_curves`` of both curves into a fresh local MLflow store (what
  every fit now does inside a recorder), and ``curves_per_round_s``: the same values logged
  with one ``log_metrics`` call per round, the way Qlib's LGBModel logs them.

Usage: ``python benchmarks/training_log_bench.py [--rounds 200] [--threads 2] [--repeat 3]``;
prints a table and writes ``benchmarks/results/training_log_bench.json``. Timings on a machine
shared with other jobs are noisy; the best of the repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "training_log_bench.json"
sys.path.insert(0, str(ROOT))


def _data(rows: int, valid_rows: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows + valid_rows, 158)).astype(np.float32)
    y = (x[:, :10] @ rng.normal(size=10) * 0.05 + rng.normal(size=rows + valid_rows)).astype(np.float64)
    return (x[:rows], y[:rows]), (x[rows:], y[rows:])


def _fit_seconds(train, valid, params: dict, rounds: int, with_train: bool) -> tuple[float, float, dict]:
    """Wall and CPU seconds of ``lightgbm.train`` (CPU time is less disturbed by other jobs)."""
    import lightgbm as lgb

    dtrain = lgb.Dataset(train[0], label=train[1], params=params, free_raw_data=True).construct()
    dvalid = lgb.Dataset(valid[0], label=valid[1], reference=dtrain, params=params).construct()
    sets, names = ([dtrain, dvalid], ["train", "valid"]) if with_train else ([dvalid], ["valid"])
    result: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=sets, valid_names=names,
              callbacks=[lgb.record_evaluation(result)])
    return time.perf_counter() - t0, time.process_time() - c0, result


def _log_seconds(curves: dict, batched: bool) -> float:
    from alphamill.model import training_log
    from alphamill.workflow.recorder import R

    with tempfile.TemporaryDirectory(prefix="alphamill-bench-") as tmp:
        R.set_uri(str(Path(tmp) / "mlruns"))
        try:
            with R.start(experiment_name="training_log_bench"):
                t0 = time.perf_counter()
                if batched:
                    training_log.record_curves(curves)
                else:
                    for name, values in training_log.metric_series(curves).items():
                        for step, value in enumerate(values):
                            R.log_metrics(step=step, **{name: value})
                return time.perf_counter() - t0
        finally:
            R.set_uri(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=300 * 1250)
    ap.add_argument("--valid-rows", type=int, default=300 * 250)
    args = ap.parse_args()

    from alphamill.workflow.experiment import FLAGSHIP_LGB

    # the model's own kwargs are not LightGBM parameters: without them no early stopping, and
    # both runs do exactly --rounds rounds
    params = {k: v for k, v in FLAGSHIP_LGB.items()
              if k not in ("loss", "num_boost_round", "early_stopping_rounds")}
    params.update(objective="mse", verbosity=-1, num_threads=args.threads, force_col_wise=True)
    train, valid = _data(args.rows, args.valid_rows)
    best = {"valid_only": float("inf"), "with_train": float("inf")}
    cpu = dict(best)
    curves: dict = {}
    for _ in range(args.repeat):
        for mode in ("valid_only", "with_train"):
            seconds, cpu_s, result = _fit_seconds(train, valid, params, args.rounds, mode == "with_train")
            best[mode] = min(best[mode], seconds)
            cpu[mode] = min(cpu[mode], cpu_s)
            if mode == "with_train":
                curves = result
    batched = min(_log_seconds(curves, True) for _ in range(args.repeat))
    per_round = _log_seconds(curves, False)
    out = {
        "rounds": args.rounds,
        "threads": args.threads,
        "train_rows": args.rows,
        "valid_rows": args.valid_rows,
        "fit_valid_only_s": round(best["valid_only"], 3),
        "fit_with_train_s": round(best["with_train"], 3),
        "train_curve_overhead": round(best["with_train"] / best["valid_only"] - 1, 4),
        "fit_valid_only_cpu_s": round(cpu["valid_only"], 3),
        "fit_with_train_cpu_s": round(cpu["with_train"], 3),
        "train_curve_cpu_overhead": round(cpu["with_train"] / cpu["valid_only"] - 1, 4),
        "curve_values": sum(len(v) for m in curves.values() for v in m.values()),
        "curves_batched_s": round(batched, 3),
        "curves_per_round_s": round(per_round, 3),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_1min": round(os.getloadavg()[0], 2)},
    }
    rows = [
        ("lightgbm.train, valid only", f"{out['fit_valid_only_s']:.2f} s wall, "
                                       f"{out['fit_valid_only_cpu_s']:.2f} s CPU"),
        ("lightgbm.train, train + valid", f"{out['fit_with_train_s']:.2f} s wall "
                                          f"({out['train_curve_overhead']:+.1%}), "
                                          f"{out['fit_with_train_cpu_s']:.2f} s CPU "
                                          f"({out['train_curve_cpu_overhead']:+.1%})"),
        (f"curves to MLflow, one batch ({out['curve_values']} values)", f"{batched:.3f} s"),
        ("curves to MLflow, one call per round", f"{per_round:.3f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{args.rounds} rounds, {args.rows:,} train rows, {args.threads} threads, "
          f"load {out['machine']['load_1min']}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
