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


def cli(module, *args, cwd, timeout=300):
    """`python -m module ARGS` as a user runs it; returns (exit code, stdout + stderr)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def read_results(sweep_dir):
    """{job overrides (without +experiment) as one string: results.json} for every run under sweep_dir."""
    import json

    runs = {}
    for path in sweep_dir.rglob("results.json"):
        results = json.loads(path.read_text())
        runs[" ".join(o for o in results["overrides"] if not o.startswith("+experiment"))] = results
    return runs
