"""Run directories for the collector's tests: one smoke run trained in-process (about a second), then copied
and edited by hand, so that every number a test asserts is one the test set."""
import copy
import hashlib
import json
import shutil
from pathlib import Path

from conftest import SMOKE, compose_config

TEMPLATE_OVERRIDES = ("optimizer=adam", "regularizer.l2=1e-3")


def train_smoke_run(run_dir: Path, overrides=TEMPLATE_OVERRIDES) -> Path:
    """A real run directory: the smoke experiment trained in this process."""
    from sparsesweep import pack

    pack.train(compose_config([*SMOKE, *overrides]), run_dir, overrides=[*SMOKE, *overrides])
    return run_dir


def write_history(run_dir: Path, dead_pct) -> None:
    """bn_history.npz of one layer of 100 features, `dead_pct[e]` of them with gamma 0 after epoch e + 1 (none
    at init), the others 1: as many values as metrics.jsonl has epochs."""
    import numpy as np

    epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert len(dead_pct) == epochs, f"the run has {epochs} epochs"
    gamma = np.ones((epochs + 1, 100), dtype=np.float32)
    for epoch, pct in enumerate(dead_pct, start=1):
        gamma[epoch, :round(pct)] = 0.0
    np.savez(run_dir / "bn_history.npz", epoch=np.arange(epochs + 1), C1_gamma=gamma, C1_beta=np.zeros_like(gamma))


def without_counters(run_dir: Path) -> Path:
    """The run as one from before the starvation counters: features.npz and bn_history.npz without them."""
    import numpy as np

    from rundir_format import starvation

    run_dir = Path(run_dir)
    for name in ("features.npz", "bn_history.npz"):
        with np.load(run_dir / name) as archive:
            kept = {key: archive[key] for key in archive.files
                    if not key.endswith(tuple(f"_{counter}" for counter in starvation.COUNTERS))
                    and key != starvation.HISTORY_STEP}
        np.savez(run_dir / name, **kept)
    return run_dir


def put(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def run_id(name: str) -> str:
    """A run_id (16 hex digits) of its own for each name."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


class Sweep:
    """A folder of run directories, each a copy of the template run (its checkpoints left out) with its
    results.json and identity.json edited: its own run_id, seed and optimizer, consistent in both files."""

    def __init__(self, root: Path, template: Path):
        self.root, self.template, self.count = Path(root), Path(template), 0
        self.root.mkdir(parents=True, exist_ok=True)
        self.results = json.loads((self.template / "results.json").read_text())

    def add(self, optimizer="adam", seed=0, sparsity=None, *, name=None, overrides=None, config=(), nested=(),
            history=None, **top) -> Path:
        """A run directory. config: {dotted key: value} in its config; nested: {dotted key: value} elsewhere in
        its results.json; top: its top-level keys (test_error, dataset, status, ...); sparsity: % by gamma;
        history: the % of dead features at each epoch end (write_history), else the template's (none dead
        at any epoch: levelled off)."""
        self.count += 1
        name = name or f"run{self.count}"
        results, config = copy.deepcopy(self.results), dict(config)
        results.update(run_id=run_id(f"{self.root}/{name}"), seed=seed, optimizer=optimizer,
                       overrides=list(overrides) if overrides is not None else
                       [*SMOKE, f"optimizer={optimizer}", f"seed={seed}", *(f"{k}={v}" for k, v in config.items())])
        edits = {"config.seed": seed, "config.optimizer.name": optimizer,
                 **{f"config.{k}": v for k, v in config.items()},
                 **({"sparsity.by_gamma.total_pct": sparsity} if sparsity is not None else {}), **dict(nested)}
        for key, value in edits.items():
            put(results, key, value)
        results.update(top)
        run_dir = self.root / name
        shutil.copytree(self.template, run_dir, ignore=shutil.ignore_patterns("*.pt", ".lock"))
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))
        (run_dir / "identity.json").write_text(json.dumps(
            {key: results[key] for key in ("run_id", "overrides", "config")}, indent=1))
        if history is not None:
            write_history(run_dir, history)
        for name in ("progress.json", "prune.json"):  # the template's files of its own run: now of this one
            if (run_dir / name).exists():
                (run_dir / name).write_text(json.dumps({**json.loads((run_dir / name).read_text()),
                                                        "run_id": results["run_id"]}, indent=1))
        return run_dir
