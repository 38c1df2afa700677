"""Every use of Hydra's private API, in one place (tests/test_hydra_compat.py fails loudly when a Hydra
release moves one of them). Nothing else in sparsesweep, hydra_plugins or the tests imports `hydra._internal`."""
from hydra._internal.config_loader_impl import get_overrides_dirname  # noqa: F401  (a run's directory name)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: F401  (the grid sweeper's base)
