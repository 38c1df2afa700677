"""A sweep's plan composes what its jobs share once (hydra_plugins/sparsesweep_sweeper/_compose.py): every job's
config must still be exactly the one Hydra's own load_sweep_config composes, key by key, for a grid that mixes
config groups, values, `+key` additions, lists, an experiment and a launcher choice."""
import itertools

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF
from hydra_plugins.sparsesweep_sweeper._compose import JobComposer

AXES = [
    ["optimizer=adam", "optimizer=sgd"],
    ["regularizer=l2", "regularizer=wd"],
    ["regularizer.exclude_bn_and_bias=true", "seed=3"],
    ["model.widths=[4,4,4,4,4,4,4]", "+optimizer.maximize=false"],
    ["+experiment=smoke", "+experiment=quickstart"],
    ["batch_size=20", "hydra/launcher=slurm"],
]
# Every combination of the first four axes, each with one of the four combinations of the last two.
JOBS = [[*job, AXES[4][number % 2], AXES[5][number // 2 % 2]]
        for number, job in enumerate(itertools.product(*AXES[:4]))]


@pytest.fixture(scope="module")
def hydra_and_composer():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["hydra.sweep.dir=somewhere"],
                                           run_mode=RunMode.MULTIRUN)
        yield loader, master, JobComposer(loader, master)


@pytest.mark.parametrize("job", JOBS, ids=[" ".join(job) for job in JOBS])
def test_a_planned_config_is_hydras_own_composition_key_by_key(hydra_and_composer, job):
    loader, master, composer = hydra_and_composer
    hydras = OmegaConf.to_container(loader.load_sweep_config(master, job), resolve=False)
    ours = OmegaConf.to_container(composer.compose(job), resolve=False)
    assert list(ours) == list(hydras)  # the same keys, in the same order
    for key in hydras:
        assert ours[key] == hydras[key], key
    task = OmegaConf.to_container(composer.task(job), resolve=False)
    assert task == {key: value for key, value in hydras.items() if key != "hydra"}


def test_jobs_that_choose_the_same_groups_share_one_composition(hydra_and_composer):
    _, _, composer = hydra_and_composer
    for job in JOBS:
        composer.compose(job)
    assert len(JOBS) == 16 and len(composer.shared) == 16  # optimizer x regularizer x (experiment, launcher)
    assert len({tuple(job) for job in JOBS}) == 16
