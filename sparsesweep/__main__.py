"""python -m sparsesweep [overrides] | -m [sweep overrides]: one Hydra job = one training run."""
import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsesweep import rundir, train
from sparsesweep.errors import ConfigError
from sparsesweep.interrupts import Interrupted

log = logging.getLogger("sparsesweep")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    """Returns None, or for a run that was not trained here a line saying why (the launcher prints it)."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        train.run(cfg, out_dir, overrides, on_open=lambda: record_launch(out_dir, cfg, hydra_cfg))
    except rundir.RunDirBusy as busy:
        log.warning("%s: not training it a second time", busy)
        if not in_sweep:
            sys.exit(2)
        return f"running elsewhere: {busy}"
    except Interrupted as stop:
        log.warning("%s: its state is saved; the same command again resumes it", stop)
        sys.exit(128 + stop.signum)
    except OSError as error:  # a full disk, a quota, a file-size limit: the run's files stay as they were
        if not in_sweep:
            log.error("could not write the run's files (%s): make room, then the same command again resumes it",
                      error)
            sys.exit(1)
        return record_failure(out_dir, cfg, overrides, f"could not write the run's files: {error}")
    except Exception as error:
        if not in_sweep:
            if isinstance(error, ConfigError):
                log.error("%s", error)
                sys.exit(2)
            raise
        # In a sweep one bad run must not stop the others: record it and go on.
        return record_failure(out_dir, cfg, overrides,
                              str(error) if isinstance(error, ConfigError) else traceback.format_exc())
    return None


def record_launch(out_dir: Path, cfg, hydra_cfg) -> None:
    """Hydra's record of this launch, `.hydra/` (as Hydra writes it; conf sets hydra.output_subdir to null so
    that Hydra does not write it before the trainer knows the directory is this run's)."""
    record = out_dir / ".hydra"
    record.mkdir(exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)):
        rundir.write_atomic(record / name, OmegaConf.to_yaml(node).encode())


def record_failure(out_dir: Path, cfg, overrides, message: str) -> str:
    """A `failed` results.json with the message's last line, where that loses nothing; returns the line."""
    log.error("run failed: %s", message)
    line = message.strip().splitlines()[-1]
    try:
        run_id = rundir.run_identity(cfg)
    except OmegaConfBaseException:  # a value that does not even resolve
        run_id = None
    try:
        rundir.record_failure(out_dir, overrides, line, run_id)
    except OSError as error:
        log.error("could not record the failure either: %s", error)
    return f"failed: {line}"


if __name__ == "__main__":
    main()
