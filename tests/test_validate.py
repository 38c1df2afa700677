"""Config validation: every bad value is one line naming the fix, before any data is loaded."""
import re
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, SMOKE, cli
from sparsesweep import shapes, validate
from sparsesweep.errors import ConfigError

BASICNET_KEYS = "name, widths, width_multiplier, pool_after, hidden, negative_slope"


BAD_VALUES = [
    # types, from the default's type in the option's file
    ("regularizer.l2=abc", "regularizer.l2=abc: must be a number, e.g. regularizer.l2=0.0001"),
    ("optimizer.lr=abc", "optimizer.lr=abc: must be a number, e.g. optimizer.lr=0.001"),
    ("optimizer.lr=null", "optimizer.lr=null: must be a number, e.g. optimizer.lr=0.001"),
    ("batch_size=2.5", "batch_size=2.5: must be an integer, e.g. batch_size=40"),
    ("prune.after_training=yes", "prune.after_training=yes: must be true or false, e.g. prune.after_training=false"),
    ("model.widths=[8,abc]", "model.widths=[8,abc]: must be a list of integers, "
                             "e.g. model.widths=[64,128,128,256,256,512,512]"),
    # ranges
    ("batch_size=0", "batch_size=0: must be a positive integer, e.g. batch_size=40"),
    ("optimizer.lr=0", "optimizer.lr=0: must be > 0, e.g. optimizer.lr=0.001"),
    ("regularizer.l2=-1e-4", "regularizer.l2=-0.0001: must be >= 0 (use regularizer=none for no regularization)"),
    ("threads=-1", "threads=-1: must be null or a positive integer, e.g. threads=1"),
    ("threads=abc", "threads=abc: must be null or a positive integer, e.g. threads=1"),
    ("dataset.resolution=0", "dataset.resolution=0: must be an integer >= 8, e.g. dataset.resolution=32"),
    ("dataset=cifar10 dataset.resolution=4",
     "dataset.resolution=4: must be null or an integer >= 8, e.g. dataset.resolution=32"),
    ("dataset.num_classes=1",
     f"dataset.num_classes=1: must be from 2 to {shapes.MAX_CLASSES}, e.g. dataset.num_classes=10"),
    ("model.widths=[]", "model.widths=[]: must be a non-empty list of positive integers, "
                        "e.g. model.widths=[64,128,128,256,256,512,512]"),
    ("model.width_multiplier=0", "model.width_multiplier=0: must be > 0, e.g. model.width_multiplier=1.0"),
    ("model=vgg16 model.dropout=1", "model.dropout=1: must be in [0, 1), e.g. model.dropout=0.5"),
    ("model=vgg16 model.head=big", "model.head=big: must be auto, cifar or imagenet, e.g. model.head=auto"),
    ("optimizer=sgd optimizer.momentum=-0.9", "optimizer.momentum=-0.9: must be >= 0, e.g. optimizer.momentum=0.9"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9,1.0]: must be two numbers in [0, 1), "
                                  "e.g. optimizer.betas=[0.9,0.99]"),
    ("measure.gamma_threshold=0", "measure.gamma_threshold=0: must be > 0, e.g. measure.gamma_threshold=0.001"),
    ("device=gpu", "device=gpu: must be auto, cpu, cuda or cuda:N, e.g. device=auto"),
    ("performance.data_on_device=yes",
     "performance.data_on_device=yes: must be auto, true or false, e.g. performance.data_on_device=auto"),
    ("schedule.base_epochs=-1", "schedule.base_epochs=-1: must be an integer >= 0, e.g. schedule.base_epochs=250"),
    # between keys
    ("schedule.base_epochs=0 schedule.decay_epochs=0", "schedule.base_epochs=0 schedule.decay_epochs=0: must have "
                                                       "a positive sum, e.g. schedule.base_epochs=250 "
                                                       "schedule.decay_epochs=75"),
    ("model.widths=[8,16] model.pool_after=[1,3]", "model.pool_after=[1,3]: must be conv indices from 1 to 2 "
                                                   "(model.widths has 2), e.g. model.pool_after=[1]"),
    # unknown keys: the option that has it, a close match, or the keys there are
    ("+regularizer.wd=1e-2", "regularizer.wd=0.01: regularizer=l2 has no key wd: use regularizer=wd "
                             "regularizer.wd=0.01"),
    ("regularizer=none +regularizer.l2=1e-3", "regularizer.l2=0.001: regularizer=none has no key l2: "
                                              "use regularizer=l2 regularizer.l2=0.001"),
    ("+optimizer.lrr=0.1", "optimizer.lrr=0.1: torch.optim.Adam has no argument lrr: did you mean optimizer.lr=0.1?"),
    ("+seeds=1", "seeds=1: the config has no key seeds: did you mean seed=1?"),
    ("+performance.compilee=true",
     "performance.compilee=true: performance has no key compilee: did you mean performance.compile=true?"),
    ("dataset=imagenet +dataset.loader.worker=2",
     "dataset.loader.worker=2: dataset.loader has no key worker: did you mean dataset.loader.workers=2?"),
    ("+model.foo=1", f"model.foo=1: model=basicnet has no key foo: remove it (its keys: {BASICNET_KEYS})"),
    ("model.name=vgg19", "model.name=vgg19: not an option in conf/model/: choose "
                         "model=basicnet | custom | resnet50 | torchvision | vgg11 | vgg16 "
                         "(or any torchvision model: model=torchvision model.name=NAME)"),
    # the optimizer class
    ("optimizer._target_=torch.optim.Nope", "optimizer._target_=torch.optim.Nope: not an importable class: "
                                            "use a torch.optim class, e.g. optimizer._target_=torch.optim.Adam"),
    ("+optimizer.weight_decay=1e-3", "optimizer.weight_decay=0.001: must be unset (the regularizer sets it): "
                                     "use regularizer=l2 regularizer.l2=0.001"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[overrides for overrides, _ in BAD_VALUES])
def test_a_bad_value_raises_one_line_naming_the_fix(make_config, overrides, message):
    cfg = make_config(SMOKE + overrides.split())
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate.check_config(cfg)


@pytest.mark.parametrize("overrides", [
    "optimizer=sgd +optimizer.nesterov=true",   # a constructor argument the option's file leaves at its default
    "optimizer=rmsprop +optimizer.alpha=0.9",
    "optimizer=sgd optimizer.momentum=0",       # an int where a float is expected
    "threads=null", "threads=2", "device=cuda:1", "performance.data_on_device=false", "regularizer.l2=0",
    "model.widths=[8,16] model.pool_after=[1]", "dataset=cifar10 dataset.resolution=null",
    "schedule.iterations_at_batch_size=null",
])
def test_unusual_good_values_pass(make_config, overrides):
    validate.check_config(make_config(SMOKE + overrides.split()))


# model=custom names its network: any importable nn.Module class
OPTIONS = [f"{group}={path.stem}" + (" model._target_=torchvision.models.MobileNetV2" if path.stem == "custom" else "")
           for group in ("model", "dataset", "optimizer", "regularizer", "schedule")
           for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", OPTIONS)
def test_smoke_validates_with_every_option(make_config, option):
    # smoke sets keys some options lack (model.hidden, dataset.train_size): those options ignore them
    validate.check_config(make_config(SMOKE + option.split()))


def test_every_null_default_in_conf_has_a_rule():
    """A null default says nothing about the type: a rule must."""
    def null_keys(mapping, prefix):
        for key, value in mapping.items():
            if isinstance(value, dict):
                yield from null_keys(value, f"{prefix}{key}.")
            elif value is None:
                yield prefix + key

    top = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))
    keys = set(null_keys({k: v for k, v in top.items() if k not in ("defaults", "hydra")}, ""))
    for group in ("model", "dataset", "optimizer", "regularizer", "schedule"):
        for path in (CONF / group).glob("*.yaml"):
            keys.update(null_keys(OmegaConf.to_container(OmegaConf.load(path)), f"{group}."))
    assert keys and keys <= set(validate.RULES), keys - set(validate.RULES)


def test_the_hydra_key_is_ignored_and_a_check_is_cheap():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=SMOKE, return_hydra_config=True)
    validate.check_config(cfg)  # also loads and caches the conf/ files
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        validate.check_config(cfg)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.010


# The command line's path for every bad value (the messages are tested above): a typed value, an unknown key
# of a torch class, and a missing dataset, which fails when it is loaded, still before training.
ON_THE_COMMAND_LINE = [
    (["regularizer.l2=abc"], "regularizer.l2=abc: must be a number"),
    (["+optimizer.lrr=0.1"], "torch.optim.Adam has no argument lrr: did you mean optimizer.lr=0.1?"),
    (["dataset=cifar10", "dataset.root=/nonexistent/cifar"], "/nonexistent/cifar"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", ON_THE_COMMAND_LINE, ids=[" ".join(args) for args, _ in ON_THE_COMMAND_LINE])
def test_bad_values_give_a_one_line_error_on_the_command_line_before_training(tmp_path, args, message):
    run_dir = tmp_path / "run"
    code, output = cli("sparsesweep", *SMOKE, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert code == 2
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], output
    assert "Traceback" not in output
    if "cifar" in args[0]:
        assert "dataset.download=true" in errors[0]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoint.pt").exists()
    assert "epoch" not in output
