"""Every job's config as Hydra's own `load_sweep_config` composes it, composing what jobs share once.

Hydra composes a job in two stages: its config-group overrides (optimizer=sgd, +experiment=smoke,
hydra/launcher=slurm) choose the defaults list, which is composed from the YAML files; then its other overrides
(regularizer.l2=1e-4, +optimizer.nesterov=true) are applied to the result, in order. Jobs that choose the same
groups share the first stage: it is composed once, by Hydra, and each job's config is a copy of it with the
job's values applied by Hydra's own override code, and the records Hydra keeps of a job's overrides
(hydra.overrides.task, hydra.job.override_dirname) written as Hydra writes them. A 10,000-run grid over a few
groups composes a few configs, not 10,000 (tests/test_plan.py compares the two, key by key). The plan reads a
job's config without Hydra's node (`task`); a job that is launched gets the whole of it (`compose`)."""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sparsesweep import hydra_compat


class JobComposer:
    def __init__(self, config_loader, master_config: DictConfig):
        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create(config_loader=config_loader)
        self.shared: Dict[Tuple[str, ...], DictConfig] = {}  # the group overrides -> their composed config
        self.tasks: Dict[Tuple[str, ...], DictConfig] = {}   # the same without `hydra`

    def chooses_defaults(self, override: Override) -> bool:
        """Whether Hydra reads the override as a choice in the defaults list (a config group, or a package)."""
        return override.package is not None or self.loader.repository.group_exists(override.key_or_group)

    def _split(self, overrides: List[str]) -> Tuple[List[Override], Tuple[str, ...], List[Override]]:
        """(every override parsed, the group overrides' lines, the value overrides), each in order."""
        parsed = self.parser.parse_overrides(list(overrides))
        groups = tuple(o.input_line for o in parsed if self.chooses_defaults(o))
        return parsed, groups, [o for o in parsed if not self.chooses_defaults(o)]

    def _shared(self, groups: Tuple[str, ...]) -> DictConfig:
        if groups not in self.shared:
            self.shared[groups] = self.loader.load_sweep_config(self.master, list(groups))
        return self.shared[groups]

    def compose(self, overrides: List[str]) -> DictConfig:
        """The job's config, equal to config_loader.load_sweep_config(master_config, overrides)."""
        parsed, groups, values = self._split(overrides)
        config = copy.deepcopy(self._shared(groups))
        hydra_compat.apply_overrides(values, config)
        task = [o for o in parsed if not o.is_hydra_override()]
        naming = config.hydra.job.config.override_dirname
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.task = [o.input_line for o in task]
            config.hydra.job.override_dirname = hydra_compat.get_overrides_dirname(
                overrides=task, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
        OmegaConf.copy_cache(from_config=self.master, to_config=config)
        return config

    def task(self, overrides: List[str]) -> DictConfig:
        """compose(overrides) without its `hydra` node, for what the plan reads of a job (its checks, its identity,
        its data): Hydra's settings are most of a config's size, and every job has its own copy of them."""
        _, groups, values = self._split(overrides)
        if groups not in self.tasks:
            task = copy.deepcopy(self._shared(groups))
            with read_write(task), open_dict(task):
                del task["hydra"]
            self.tasks[groups] = task
        config = copy.deepcopy(self.tasks[groups])
        hydra_compat.apply_overrides(values, config)
        return config
