"""python -m sparsesweep [overrides] | -m [sweep overrides]: one Hydra job = one training run (a pack of one;
the local and SLURM launchers may hand several jobs to one process: sparsesweep.jobs)."""
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sparsesweep import jobs


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    """Returns None, or for a run that was not trained here a line saying why (the launcher prints it)."""
    hydra_cfg = HydraConfig.get()
    return jobs.train_jobs([jobs.Job(cfg, hydra_cfg)], in_sweep=hydra_cfg.mode == RunMode.MULTIRUN)[0]


if __name__ == "__main__":
    main()
