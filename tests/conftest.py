from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The smoke experiment, one thread: runs in about a second.
SMOKE = ["+experiment=smoke"]


@pytest.fixture
def make_config():
    """make_config(overrides) -> the composed, unresolved config, as `python -m sparsesweep` would see it."""
    def make(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return make
