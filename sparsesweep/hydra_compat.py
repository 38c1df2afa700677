"""Every use of Hydra's private API, in one place (tests/test_hydra_compat.py fails loudly when a Hydra
release moves one of them). Nothing else in sparsesweep, hydra_plugins or the tests imports `hydra._internal`."""
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_loader_impl import get_overrides_dirname  # noqa: F401  (a run's directory name)
# The command line's checks before Hydra runs (sparsesweep.__main__): Hydra's argument parser, the config
# search path it builds from @hydra.main's config_path, and the Hydra object that composes with that path.
from hydra._internal.hydra import Hydra  # noqa: F401
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser  # noqa: F401


def __getattr__(name: str):
    """BasicSweeper (the grid sweeper's base), looked up when used: Hydra's plugin scan executes its module
    again, and a subclass of the class bound before the scan fails in BasicSweeper.__init__ (the command line
    imports this module before Hydra scans)."""
    if name == "BasicSweeper":
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return BasicSweeper
    raise AttributeError(name)


def apply_overrides(overrides, config) -> None:
    """Applies parsed value overrides (not config-group choices) to a composed config, as Hydra does after
    composing its defaults list (the grid sweeper composes what its jobs share once: _compose.py)."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, config)
