"""The private Hydra API sparsesweep relies on is where sparsesweep.hydra_compat expects it, and behaves as
it is used; no other module imports hydra._internal."""
import re

from conftest import ROOT
from sparsesweep import CONF_DIR, hydra_compat


def test_the_overrides_dirname_is_hydras_default_naming():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(["b=2", "a=1", "+experiment=smoke"])
    assert hydra_compat.get_overrides_dirname(overrides, exclude_keys=[], item_sep=",", kv_sep="=") == \
        "+experiment=smoke,a=1,b=2"


def test_the_basic_sweeper_splits_overrides_into_batches():
    assert hasattr(hydra_compat.BasicSweeper, "split_arguments")
    assert hasattr(hydra_compat.BasicSweeper, "split_overrides_to_chunks")


def test_no_other_module_imports_hydras_private_api():
    offenders = [str(path.relative_to(ROOT)) for folder in ("sparsesweep", "hydra_plugins", "multirun_analysis",
                                                              "rundir_format", "tests", "benchmarks")
                 for path in (ROOT / folder).rglob("*.py")
                 if path.name != "hydra_compat.py"
                 and re.search(r"^\s*(from|import)\s+hydra\._internal", path.read_text(), re.MULTILINE)]
    assert offenders == []


def test_hydras_argument_parser_reads_the_flags_the_command_line_checks_before_hydra_runs():
    args = hydra_compat.get_args_parser().parse_args(["-m", "--config-dir", "extra", "a=1", "b=2,3"])
    assert args.multirun and args.config_dir == "extra" and args.overrides == ["a=1", "b=2,3"]
    for flag in ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun", "config_path",
                 "config_name"):
        assert hasattr(args, flag), flag


def test_the_search_path_and_hydra_compose_as_hydra_main_does():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    import sparsesweep.__main__ as entry

    search_path = hydra_compat.create_automatic_config_search_path(entry.__file__, None, entry.CONFIG_PATH)
    assert any(source.path == str(CONF_DIR) for source in search_path.get_path())
    try:
        composer = hydra_compat.Hydra.create_main_hydra2(task_name="sparsesweep", config_search_path=search_path)
        assert composer.get_mode("config", ["+experiment=quickstart"]) == RunMode.MULTIRUN
        cfg = composer.compose_config("config", ["optimizer=sgd"], run_mode=RunMode.RUN)
        assert cfg.optimizer.name == "sgd" and cfg.hydra.run.dir.startswith("outputs/")
        assert "optimizer" in composer.config_loader.list_groups("")
        assert "adam" in composer.config_loader.get_group_options("optimizer")
    finally:
        GlobalHydra.instance().clear()
