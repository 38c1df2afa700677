"""The private Hydra API sparsesweep relies on is where sparsesweep.hydra_compat expects it, and behaves as
it is used; no other module imports hydra._internal."""
import re

from conftest import ROOT
from sparsesweep import hydra_compat


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
                 if path.name != "hydra_compat.py" and re.search(r"^\s*(from|import)\s+hydra\._internal", path.read_text(), re.MULTILINE)]
    assert offenders == []
