"""Every config option composes (Hydra's compose API), and the design card's sweep runs for real."""
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT

GROUPS = ["model", "dataset", "optimizer", "regularizer", "schedule", "experiment"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(make_config, group, option):
    override = f"+experiment={option}" if group == "experiment" else f"{group}={option}"
    cfg = make_config([override])
    plain = OmegaConf.to_container(cfg, resolve=True)
    if group != "experiment":
        assert plain[group]["name"] == option
    assert plain["batch_size"] >= 1 and plain["model"]["name"] == "basicnet"


def test_defaults_are_the_papers_base_setting(make_config):
    cfg = make_config()
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name, cfg.regularizer.name) == \
        ("basicnet", "cifar10", "adam", "l2")
    assert cfg.regularizer.l2 == 1e-4 and cfg.batch_size == 40
    assert (cfg.schedule.base_epochs, cfg.schedule.decay_epochs, cfg.schedule.decay_factor) == (250, 75, 0.1)
    assert list(cfg.model.widths) == [64, 128, 128, 256, 256, 512, 512]
    assert list(cfg.optimizer.betas) == [0.9, 0.99] and cfg.optimizer.eps == 1e-8


@pytest.mark.parametrize("name, lr", [("sgd", 0.1), ("adam", 1e-3), ("adadelta", 1.0), ("adagrad", 1e-2),
                                      ("amsgrad", 1e-3), ("adamax", 2e-3), ("rmsprop", 1e-3)])
def test_optimizer_base_learning_rates_are_the_papers(make_config, name, lr):
    assert make_config([f"optimizer={name}"]).optimizer.lr == lr


def test_a_coefficient_of_the_wrong_regularizer_is_rejected(make_config):
    with pytest.raises(Exception, match="l2"):
        make_config(["regularizer=wd", "regularizer.l2=1e-4"])


def test_the_design_card_sweep_runs_six_jobs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sparsesweep", "-m", "optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5",
               "+experiment=smoke", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = set()
    for job in range(6):
        results = json.loads((tmp_path / str(job) / "results.json").read_text())
        assert results["status"] == "completed"
        seen.add((results["optimizer"], results["coefficient"]))
    assert seen == {(o, c) for o in ("adam", "sgd", "adamax") for c in (1e-4, 1e-5)}

    summary = subprocess.run([sys.executable, "-m", "multirun_analysis", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    rows = [line for line in summary.stdout.splitlines() if "optimizer=" in line]
    assert len(rows) == 6 and all("completed" in row for row in rows)
