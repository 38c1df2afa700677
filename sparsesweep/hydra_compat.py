"""Every use of Hydra's private API, in one place (tests/test_hydra_compat.py fails loudly when a Hydra
release moves one of them). Nothing else in sparsesweep, hydra_plugins or the tests imports `hydra._internal`."""
from hydra._internal.config_loader_impl import get_overrides_dirname  # noqa: F401  (a run's directory name)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: F401  (the grid sweeper's base)
# The command line's checks before Hydra runs (sparsesweep.__main__): Hydra's argument parser, the config
# search path it builds from @hydra.main's config_path, and the Hydra object that composes with that path.
from hydra._internal.hydra import Hydra  # noqa: F401
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser  # noqa: F401
