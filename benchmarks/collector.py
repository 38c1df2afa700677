"""How fast multirun_analysis loads and tabulates many runs: writes N synthetic Table 1 run directories
(realistic results.json files, valid against rundir_format.schema), then times load_runs (every file read
through the schema) + the Table 1 build. Target: 5,000 runs in <= 10 s.

    python benchmarks/collector.py [--runs 5000] [--dir DIR]
"""
import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from multirun_analysis import tables
from multirun_analysis.load import load_runs

LAYERS = [f"C{i}" for i in range(1, 8)]
ROWS = tables.paper_table(tables.TABLES["table1"])[["regularizer", "optimizer", "coef"]].values.tolist()


def synthetic_results(number: int, rng: random.Random) -> dict:
    regularizer, optimizer, coef = ROWS[number % len(ROWS)]
    dataset = ("cifar10", "cifar100")[number // len(ROWS) % 2]
    seed = number // (2 * len(ROWS))
    block = lambda threshold: {"threshold": threshold, "total_pct": rng.uniform(0, 90),
                               "per_layer_pct": {l: rng.uniform(0, 100) for l in LAYERS},
                               "inactive": rng.randrange(1856), "features": 1856,
                               "per_layer_inactive": {l: rng.randrange(64) for l in LAYERS}}
    return {"schema": 1, "status": "completed", "run_id": f"{number:016x}",
            "config": {"model": {"name": "basicnet", "widths": [64, 128, 128, 256, 256, 512, 512],
                                 "negative_slope": 0.0}, "dataset": {"name": dataset},
                       "optimizer": {"name": optimizer}, "regularizer": {"name": regularizer, regularizer: float(coef)}},
            "overrides": [f"dataset={dataset}", f"optimizer={optimizer}", f"regularizer.{regularizer}={coef}",
                          f"seed={seed}"],
            "model": "basicnet", "dataset": dataset, "optimizer": optimizer, "regularizer": regularizer,
            "coefficient": float(coef), "batch_size": 40, "seed": seed, "test_error": rng.uniform(9, 50),
            "test_top5_error": rng.uniform(0, 9), "test_loss": rng.uniform(0.3, 2), "train_loss": rng.uniform(0, 1),
            "train_error": rng.uniform(0, 10), "epochs": 325, "iterations": 406250, "wall_time_s": 1800.0,
            "measure_time_s": 20.0, "device_time_s": 1800.0,
            "sparsity": {"by_gamma": block(1e-3), "by_gamma_alt": block(1e-2), "by_activation": block(1e-12),
                         "by_activation_alt": block(1e-4)},
            "zeroed_test_error": rng.uniform(9, 50), "zeroed_test_top5_error": rng.uniform(0, 9),
            "selectivity": {"ratio": 1e-3, "bin_edges": [i / 10 for i in range(11)],
                            "per_layer": {l: {"mean": 0.5, "mean_active": 0.5, "histogram": [6] * 10} for l in LAYERS}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the runs (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="collector-bench-"))
    rng = random.Random(0)
    for number in range(args.runs):
        run_dir = root / f"run{number:05d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps(synthetic_results(number, rng), indent=1))
    start = time.perf_counter()
    skipped = Counter()
    runs = load_runs([root], skipped, completed_only=True)
    loaded = time.perf_counter()
    assert len(runs) == args.runs and not skipped, skipped  # every synthetic run validates
    table = tables.build(tables.TABLES["table1"], runs)
    done = time.perf_counter()
    print(f"{len(runs)} runs loaded in {loaded - start:.2f} s, Table 1 ({len(table)} rows) built in "
          f"{done - loaded:.2f} s: {done - start:.2f} s in all (target <= 10 s: ratio {(done - start) / 10:.2f})")


if __name__ == "__main__":
    main()
