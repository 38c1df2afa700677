"""python -m sparsesweep [overrides] | -m [sweep overrides]: one Hydra job = one training run (a pack of one;
the local and SLURM launchers may hand several jobs to one process: sparsesweep.jobs).

Before Hydra runs (it makes a run's directory and log file first of all), the command line is checked as
Hydra will compose it: the config composes, every value passes sparsesweep.validate, the output directory
can be made. Any problem is one line naming the fix, exit code 2, and nothing written. In a sweep each job
is checked by the grid sweeper as it plans the runs (an invalid one is recorded as failed, not launched).
Nothing here imports torch until a run looks for its data (just before it trains, or for --cfg job): --help
and a bad value cost no torch import.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import hydra

from sparsesweep import hydra_compat, refusals, schema, validate  # noqa: F401  (schema: registers the config's schema)
from sparsesweep.errors import LOG_FORMAT, ConfigError

CONFIG_PATH, CONFIG_NAME = "conf", "config"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def train(cfg):
    """Returns None, or for a run that was not trained here a line saying why (the launcher prints it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sparsesweep import jobs

    hydra_cfg = HydraConfig.get()
    return jobs.train_jobs([jobs.Job(cfg, hydra_cfg)], in_sweep=hydra_cfg.mode == RunMode.MULTIRUN)[0]


def main() -> None:
    args = hydra_compat.get_args_parser().parse_args()
    problem = refusal(args)
    if problem:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log = logging.getLogger("sparsesweep")
        log.addHandler(handler)
        log.error("%s", problem)
        sys.exit(2)
    train()
    if args.cfg and not args.multirun:  # a dry run of one run: say what it would not find
        for line in missing_data(args):
            print(f"missing: {line}", file=sys.stderr)


def missing_data(args) -> list[str]:
    """The datasets the run of `args` needs and does not find on disk, each with what fetches it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sparsesweep.datasets import missing_data as missing  # torchvision knows where datasets live

    try:
        return missing(_hydra(args).compose_config(args.config_name or CONFIG_NAME, list(args.overrides),
                                                   run_mode=RunMode.RUN))
    finally:
        GlobalHydra.instance().clear()


def refusal(args) -> str | None:
    """The line that refuses the command line `args` (Hydra's parsed arguments) for a run or a sweep, or None;
    reads the config files and writes nothing. For --cfg only the config's composition is checked (it prints
    what it composes); help, --info and the like are Hydra's own. A single run's data must be on disk (or
    dataset.download=true): a run refused for it leaves no directory behind."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    if args.experimental_rerun:  # Hydra unpickles the file: whoever wrote it chooses what runs
        return (f"--experimental-rerun {args.experimental_rerun}: a pickle can run any code, so sparsesweep never "
                "loads one: run the command again (a run's overrides are in its .hydra/overrides.yaml; the same "
                "command resumes it from its checkpoint)")
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None
    if args.config_dir is not None and not os.path.isdir(args.config_dir):
        return f"--config-dir={args.config_dir}: not a directory: give the folder that holds your config groups"
    overrides = list(args.overrides)
    config_name = args.config_name or CONFIG_NAME
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweep = next((o for o in parsed if o.is_sweep_override()), None)
        composer = _hydra(args)
        groups = set(composer.config_loader.list_groups(""))
        for override in parsed:
            group, value = override.key_or_group, override.value()
            # a swept group's values are checked one by one, as the sweeper plans each job
            if group in groups and not (isinstance(value, str) or override.is_sweep_override() or
                                        isinstance(value, list) and all(isinstance(v, str) for v in value)):
                options = composer.config_loader.get_group_options(group)
                return refusals.not_an_option(override.input_line, group, options)
        # A config may make itself a sweep (hydra.mode: MULTIRUN, as +experiment=quickstart does).
        multirun = args.multirun or (sweep is not None and
                                     composer.get_mode(config_name, overrides) == RunMode.MULTIRUN)
        if sweep is not None and not multirun and not args.cfg:
            key, _, values = sweep.input_line.partition("=")
            return (f"{sweep.input_line}: a sweep needs -m (python -m sparsesweep -m ... {sweep.input_line}); "
                    f"one value that holds a comma is quoted for Hydra, inside the shell's quotes: "
                    f"\"{key}='{values}'\"")
        cfg = composer.compose_config(config_name, overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
        if args.cfg:
            return None
        if multirun or cfg.hydra.mode == RunMode.MULTIRUN:  # each job is checked as the sweep is planned
            return unwritable("hydra.sweep.dir", cfg.hydra.sweep.dir)
        validate.check_config(cfg)
        return unwritable("hydra.run.dir", cfg.hydra.run.dir) or _missing_data(cfg)
    except (HydraException, OmegaConfBaseException, ConfigError, ValueError, OSError) as error:
        # what refuses a config: Hydra's and OmegaConf's errors, check_config's, and Hydra's plain ValueErrors
        return validate.explain(error, overrides)
    finally:
        GlobalHydra.instance().clear()


def _missing_data(cfg) -> str | None:
    from sparsesweep.datasets import missing_data as missing  # torch: only for a run about to train

    lines = missing(cfg)
    return f"missing data: {lines[0]}" if lines else None


def _hydra(args):
    """A Hydra that composes as @hydra.main will for these arguments: the same config search path."""
    from hydra.core.config_search_path import SearchPathQuery

    search_path = hydra_compat.create_automatic_config_search_path(
        __file__, None, args.config_path if args.config_path is not None else CONFIG_PATH)
    if args.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(args.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    return hydra_compat.Hydra.create_main_hydra2(task_name="sparsesweep", config_search_path=search_path)


def unwritable(key: str, directory) -> str | None:
    """Why `directory` cannot become a run's (or a sweep's) directory, or None. Tried by making and removing
    a temporary directory in its nearest existing folder, so that nothing is left behind."""
    if not str(directory).strip():
        return f"{key}={directory}: must be a directory, e.g. {key}=outputs/run1"
    path = Path(str(directory))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={path}: {existing} is a file, not a directory: choose another {key}=DIR"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sparsesweep-check-", dir=existing))
    except OSError as error:
        return f"{key}={path}: cannot be created ({existing}: {error.strerror}): choose a directory you can write " \
               f"to: {key}=DIR"
    return None


def run_command() -> None:
    """main() for the command line (`python -m sparsesweep` and the `sparsesweep` command): a reader that stops
    early (--help | head -1) ends the output without a traceback."""
    try:
        main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit is quiet
        sys.exit(1)


if __name__ == "__main__":
    run_command()
