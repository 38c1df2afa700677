"""python -m sparsesweep [overrides] | -m [sweep overrides]: one Hydra job = one training run."""
import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sparsesweep import rundir, train
from sparsesweep.errors import ConfigError

log = logging.getLogger("sparsesweep")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        train.run(cfg, out_dir, overrides)
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(error, ConfigError):
                log.error("%s", error)
                sys.exit(2)
            raise
        # In a sweep one bad run must not stop the others: record it and go on.
        message = str(error) if isinstance(error, ConfigError) else traceback.format_exc()
        log.error("run failed: %s", message)
        rundir.write_atomic(out_dir / rundir.RESULTS, rundir.json_bytes(
            {"schema": rundir.RESULTS_SCHEMA, "status": "failed", "overrides": overrides,
             "error": message.strip().splitlines()[-1]}))


if __name__ == "__main__":
    main()
