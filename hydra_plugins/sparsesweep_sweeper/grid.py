"""`hydra/sweeper=grid`: the paper's grids as data, and sweeps that resume.

A grid is the Cartesian product of the command line's sweeps and `params` (as Hydra's basic sweeper),
times the union of `grid` rows, each row itself a small product: Table 1 gives every optimizer its own
L2 values in one list instead of seven config files.

    hydra.sweeper.params: {dataset: cifar10,cifar100, seed: 0,1,2}
    hydra.sweeper.grid:
      - {optimizer: sgd, regularizer.l2: [1e-3, 1e-4, 1e-5, 0]}
      - {optimizer: adam, regularizer: wd, regularizer.wd: [5e-4, 2e-4, 1e-4]}

Before launching, each planned run's directory is looked at: a run already completed (or diverged) with
the same identity (rundir.run_identity) is skipped; one with a checkpoint is resumed by the trainer; a
failed one is run again. `hydra.sweeper.dry_run=true` lists the runs and launches nothing.
"""

import itertools
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf

from sparsesweep import rundir

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.sparsesweep_sweeper.grid.GridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grid: Optional[List[Dict[str, Any]]] = None
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="sparsesweep")


def _values(value) -> List[str]:
    """A row's value: a list, a comma-separated sweep string, or a single value."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",")]


def expand_rows(grid) -> List[List[str]]:
    """Each row's Cartesian product, rows concatenated, in order."""
    runs = []
    for row in grid or [{}]:
        keys = list(row)
        for combination in itertools.product(*(_values(row[k]) for k in keys)):
            runs.append([f"{k}={v}" for k, v in zip(keys, combination)])
    return runs


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size=None, params=None, grid=None, dry_run=False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grid = OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else grid
        self.dry_run = dry_run

    def plan(self, arguments: List[str]) -> List[List[str]]:
        """Every run's override list."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        common = self.split_arguments(parser.parse_overrides(self._parse_config() + list(arguments)), None)[0]
        runs = []
        for base in common:
            base_keys = {o.split("=", 1)[0].lstrip("+~") for o in base}
            for row in expand_rows(self.grid):
                clash = base_keys & {o.split("=", 1)[0].lstrip("+~") for o in row}
                if clash:
                    raise HydraException(f"{sorted(clash)} set both by a grid row and by the command line or "
                                         f"hydra.sweeper.params: set each key in one place")
                runs.append(base + row)
        return runs

    def classify(self, overrides: Sequence[str]) -> str:
        """'skipped', 'resumed', 'failed' (to rerun) or 'new', from the run's directory."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        job_dir = Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)
        identity = rundir.run_identity(config)
        try:
            results = json.loads((job_dir / rundir.RESULTS).read_text())
        except (OSError, ValueError):
            results = {}
        if results.get("status") in ("completed", "diverged") and results.get("run_id") == identity:
            return "skipped"
        if (job_dir / rundir.CHECKPOINT).exists():
            return "resumed"
        return "failed" if results.get("status") == "failed" else "new"

    def sweep(self, arguments: List[str]) -> Any:
        runs = self.plan(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        # Composing every run's config costs ~0.1 s: only a relaunch needs it.
        kinds = [self.classify(run) for run in runs] if sweep_dir.exists() else ["new"] * len(runs)
        counts = Counter(kinds)
        log.info("Sweep %s: %d runs: %d skipped (completed), %d resumed, %d new, %d failed before (rerun)",
                 sweep_dir, len(runs), counts["skipped"], counts["resumed"], counts["new"], counts["failed"])
        if self.dry_run:
            for number, (run, kind) in enumerate(zip(runs, kinds)):
                print(f"#{number:<4} {kind:8} {' '.join(run)}")
            print(f"{len(runs)} runs")
            return []
        todo = [run for run, kind in zip(runs, kinds) if kind != "skipped"]
        if not todo:
            return []
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # The whole plan, for `python -m multirun_analysis status` to tell which runs are still missing.
        rundir.write_atomic(sweep_dir / rundir.SWEEP_PLAN, rundir.json_bytes({"runs": runs}))
        self.overrides = list(self.split_overrides_to_chunks(todo, self.max_batch_size))
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            initial_job_idx += len(batch)
        return returns
