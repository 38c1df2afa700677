"""`make install-cpu` ends by importing torch and torchvision together, as a user's script would
(`python -m sparsesweep._torchvision`): a pair that does not import is named, build by build, with the command
that installs a matching one, and exits 1. Checked with stand-in packages, whatever this machine has."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TORCH = "__version__ = '2.13.0+cpu'\n"
TORCHVISION_FOR_CUDA = "__version__ = '0.28.0+cu130'\n"


def stand_ins(base, torchvision_init: str):
    for name, init, version in (("torch", "", TORCH), ("torchvision", torchvision_init, TORCHVISION_FOR_CUDA)):
        (base / name).mkdir(parents=True)
        (base / name / "__init__.py").write_text(init)
        (base / name / "version.py").write_text(version)


def check(base) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{base}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "sparsesweep._torchvision"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_pair_that_does_not_import_is_named_with_the_command_that_gives_a_matching_one(tmp_path):
    stand_ins(tmp_path, "raise RuntimeError('operator torchvision::nms does not exist')\n")
    done = check(tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "torch 2.13.0+cpu and torchvision 0.28.0+cu130 do not import together (RuntimeError: operator "
        "torchvision::nms does not exist); a matching CPU pair: pip install --force-reinstall --index-url "
        "https://download.pytorch.org/whl/cpu torch==2.13.0 torchvision==0.28.0")


@pytest.mark.parametrize("torchvision_init", ["", "import torch\n"])
def test_a_pair_that_imports_passes(tmp_path, torchvision_init):
    stand_ins(tmp_path, torchvision_init)
    done = check(tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "torch and torchvision import together", done.stderr
