"""Every config option composes (Hydra's compose API) and validates, and the design card's sweep runs for real."""
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF, cli, read_results
from sparsesweep import validate

GROUPS = ["model", "dataset", "optimizer", "regularizer", "schedule", "experiment"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


# The model each experiment trains (the paper's Tables 3-5 use VGG and ResNet, everything else BasicNet).
EXPERIMENT_MODEL = {"table3": "vgg16", "table4": "vgg11", "table5": "resnet50"}
# model=custom names its network (any importable nn.Module class), which names the run's model
OPTION_NEEDS = {"custom": ["model._target_=torchvision.models.MobileNetV2"]}
MODEL_NAMES = {"torchvision": "resnet18", "custom": "torchvision.models.MobileNetV2"}


@pytest.mark.slow
@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_resolves_and_validates(make_config, group, option):
    override = f"+experiment={option}" if group == "experiment" else f"{group}={option}"
    cfg = make_config([override, *OPTION_NEEDS.get(option, [])])
    validate.check_config(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if group != "experiment":  # model=torchvision and model=custom leave `name` to the architecture
        assert plain[group].get("source", plain[group]["name"]) == option
    model = MODEL_NAMES.get(option, option) if group == "model" else EXPERIMENT_MODEL.get(option, "basicnet")
    assert plain["batch_size"] >= 1 and plain["model"]["name"] == model


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
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'regularizer\.l2'"):
        make_config(["regularizer=wd", "regularizer.l2=1e-4"])


@pytest.mark.slow
def test_the_design_card_sweep_runs_six_jobs_at_most_two_at_once(tmp_path):
    code, output = cli("sparsesweep", "-m", "optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5",
                       "+experiment=smoke", f"hydra.sweep.dir={tmp_path}", "hydra.launcher.cpu_parallel=2",
                       cwd=tmp_path)
    assert code == 0, output
    runs = read_results(tmp_path)
    assert {(r["optimizer"], r["coefficient"], r["status"]) for r in runs.values()} == \
        {(o, c, "completed") for o in ("adam", "sgd", "adamax") for c in (1e-4, 1e-5)}
    # Each job's lifetime: its config written at start .. its results written at the end.
    spans = [((p.parent / ".hydra" / "config.yaml").stat().st_mtime, p.stat().st_mtime)
             for p in tmp_path.rglob("results.json")]
    most_at_once = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most_at_once <= 2 and "at most 2 at once" in output  # never more than its slots

    code, summary = cli("multirun_analysis", str(tmp_path), cwd=tmp_path)
    rows = [line for line in summary.splitlines() if "optimizer=" in line]
    assert code == 0 and len(rows) == 6 and all("completed" in row for row in rows), summary
