"""Config validation: every bad value is one line naming the fix, before anything is written.

In-process through the command line's own check (sparsesweep.__main__.refusal: Hydra composes with the
schema, then validate); a handful of real command lines in the slow tests."""
import math
import re
import tempfile
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import CONF, SMOKE, cli, read_results
from sparsesweep import hydra_compat, refusals, schema, shapes, validate
from sparsesweep.__main__ import refusal
from sparsesweep.errors import ConfigError

BASICNET_KEYS = "name, width_multiplier, widths, pool_after, hidden, negative_slope"


def problem(*args, cwd: Path) -> str | None:
    """What `python -m sparsesweep ARGS` run in cwd says before it starts (None: it would start)."""
    places = [f"{key}={cwd}/{name}" for key, name in (("hydra.run.dir", "run"), ("hydra.sweep.dir", "sweep"))
              if not any(arg.startswith(f"{key}=") for arg in args)]
    return refusal(hydra_compat.get_args_parser().parse_args([*args, *places]))


BAD_VALUES = [
    # types, from the schema (Hydra refuses them as the config composes)
    ("regularizer.l2=abc", "regularizer.l2=abc: must be a number, e.g. regularizer.l2=0.0001"),
    ("optimizer.lr=abc", "optimizer.lr=abc: must be a number, e.g. optimizer.lr=0.001"),
    ("optimizer.lr=null", "optimizer.lr=null: must be a number, e.g. optimizer.lr=0.001"),
    ("batch_size=2.5", "batch_size=2.5: must be an integer, e.g. batch_size=40"),
    ("prune.after_training=maybe",
     "prune.after_training=maybe: must be true or false, e.g. prune.after_training=false"),
    ("model.widths=[8,abc]", "model.widths=[8,abc]: must be a list of integers, "
                             "e.g. model.widths=[64,128,128,256,256,512,512]"),
    ("threads=abc", "threads=abc: must be null or a positive integer, e.g. threads=1"),
    ("seed=1e20", "seed=1e20: must be an integer, e.g. seed=0"),
    # numbers no run can use
    ("optimizer.lr=inf", "optimizer.lr=inf: must be a finite number, e.g. optimizer.lr=0.001"),
    ("optimizer.lr=nan", "optimizer.lr=nan: must be a finite number, e.g. optimizer.lr=0.001"),
    ("regularizer.l2=-inf", "regularizer.l2=-inf: must be a finite number, e.g. regularizer.l2=0.0001"),
    ("optimizer.betas=[0.9,nan]", "optimizer.betas=[0.9,nan]: must be finite numbers, e.g. optimizer.betas=[0.9,0.99]"),
    ("seed=99999999999999999999", "seed=99999999999999999999: must be at most 4294967295, e.g. seed=0"),
    ("batch_size=99999999999", "batch_size=99999999999: must be at most 2147483647, e.g. batch_size=40"),
    # ranges
    ("batch_size=0", "batch_size=0: must be a positive integer, e.g. batch_size=40"),
    ("optimizer.lr=0", "optimizer.lr=0: must be > 0, e.g. optimizer.lr=0.001"),
    ("regularizer.l2=-1e-4", "regularizer.l2=-0.0001: must be >= 0 (use regularizer=none for no regularization)"),
    ("threads=-1", "threads=-1: must be null or a positive integer, e.g. threads=1"),
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
    ("optimizer=adafactor optimizer.d=0.5", "optimizer.d=0.5: must be >= 1, e.g. optimizer.d=1.0"),
    # between keys
    ("schedule.base_epochs=0 schedule.decay_epochs=0", "schedule.base_epochs=0 schedule.decay_epochs=0: must have "
                                                       "a positive sum, e.g. schedule.base_epochs=250 "
                                                       "schedule.decay_epochs=75"),
    ("model.widths=[8,16] model.pool_after=[1,3]", "model.pool_after=[1,3]: must be conv indices from 1 to 2 "
                                                   "(model.widths has 2), e.g. model.pool_after=[1]"),
    # unknown keys, with + or without: the option that has it, a close match, or the keys there are
    ("+regularizer.wd=1e-2", "regularizer.wd=0.01: regularizer=l2 has no key wd: use regularizer=wd "
                             "regularizer.wd=0.01"),
    ("regularizer=wd regularizer.l2=1e-4", "regularizer.l2=0.0001: regularizer=wd has no key l2: "
                                           "use regularizer=l2 regularizer.l2=0.0001"),
    ("regularizer=none +regularizer.l2=1e-3", "regularizer.l2=0.001: regularizer=none has no key l2: "
                                              "use regularizer=l2 regularizer.l2=0.001"),
    ("+optimizer.lrr=0.1", "optimizer.lrr=0.1: torch.optim.Adam has no argument lrr: did you mean optimizer.lr=0.1?"),
    ("optimizer.lrr=0.1", "optimizer.lrr=0.1: torch.optim.Adam has no argument lrr: did you mean optimizer.lr=0.1?"),
    ("+seeds=1", "seeds=1: the config has no key seeds: did you mean seed=1?"),
    ("seeds=1", "seeds=1: the config has no key seeds: did you mean seed=1?"),
    ("+performance.compilee=true",
     "performance.compilee=true: performance has no key compilee: did you mean performance.compile=true?"),
    ("performance.compilee=true",
     "performance.compilee=true: performance has no key compilee: did you mean performance.compile=true?"),
    ("dataset=imagenet +dataset.loader.worker=2",
     "dataset.loader.worker=2: dataset.loader has no key worker: did you mean dataset.loader.workers=2?"),
    ("dataset=imagenet dataset.loader.worker=2",
     "dataset.loader.worker=2: dataset.loader has no key worker: did you mean dataset.loader.workers=2?"),
    ("+model.foo=1", f"model.foo=1: model=basicnet has no key foo: remove it (its keys: {BASICNET_KEYS})"),
    # options and names
    ("optimizer=adma", "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?"),
    ("+experiment=nope", "experiment=nope: not an option of experiment: choose experiment=architectures | "
                         "architectures_cpu | claims | claims_cpu | difficulty | quickstart | smoke | table1 | table2 "
                         "| table3 | table4 | table5 | table6 | table7"),
    ("logger=[csv,nope]", "logger=nope: not an option of logger: python -m sparsesweep --help lists the "
                          "options"),
    ("optimizer=null", "optimizer=null: not an option of optimizer: choose optimizer=adadelta | adafactor | "
                       "adagrad | adam | adamax | adamw | amsgrad | nadam | radam | rmsprop | sgd"),
    ("optimizer=adafactor optimizer.eps=[null,abc]",
     "optimizer.eps=[null,abc]: must be a list of numbers, e.g. optimizer.eps=[null,0.001]"),
    ("model.name=vgg19", "model.name=vgg19: not an option of model: choose "
                         "model=basicnet | custom | resnet50 | torchvision | vgg11 | vgg16"),
    ("model.name=vgg16", "model.name=vgg16: names another option: use model=vgg16"),
    # the command line itself
    ("optimizer=adam,sgd", "optimizer=adam,sgd: a sweep needs -m (python -m sparsesweep -m ... optimizer=adam,sgd); "
                           "one value that holds a comma is quoted for Hydra, inside the shell's quotes: \"optimizer='adam,sgd'\""),
    ("optimizer.lr=[", "optimizer.lr=[: not an override Hydra can read (no viable alternative at input '['): "
                       "quote a value with special characters, e.g. key='a value'"),
    # the optimizer class
    ("optimizer._target_=torch.optim.Nope", "optimizer._target_=torch.optim.Nope: not an importable class: "
                                            "use a torch.optim class, e.g. optimizer._target_=torch.optim.Adam"),
    ("+optimizer.weight_decay=1e-3", "optimizer.weight_decay=0.001: must be unset (the regularizer sets it): "
                                     "use regularizer=l2 regularizer.l2=0.001"),
    ("optimizer=sgd +optimizer.nesterov=maybe",
     "optimizer.nesterov=maybe: must be true or false, e.g. optimizer.nesterov=false"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[overrides for overrides, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_fix(tmp_path, overrides, message):
    assert problem(*SMOKE, *overrides.split(), cwd=tmp_path) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides", [
    "optimizer=sgd +optimizer.nesterov=true",   # a constructor argument the option's file leaves at its default
    "optimizer=rmsprop +optimizer.alpha=0.9",
    "optimizer=sgd optimizer.momentum=0",       # an int where a float is expected
    "threads=null", "threads=2", "device=cuda:1", "performance.data_on_device=false", "regularizer.l2=0",
    "model.widths=[8,16] model.pool_after=[1]", "dataset=cifar10 dataset.resolution=null",
    "schedule.iterations_at_batch_size=null", "optimizer.lr=1e30", "seed=4294967295",
    "prune.after_training=yes",                  # OmegaConf's booleans: yes/no, on/off, 1/0
    "+experiment=quickstart",                    # a sweep by its config: each job is checked as it is planned
])
def test_unusual_good_values_pass(tmp_path, overrides):
    # (the base setting's CIFAR-10 is not on disk here: a run would be refused for its data, not for a value)
    assert problem(*overrides.split(), "dataset.download=true", cwd=tmp_path) is None


# model=custom names its network: any importable nn.Module class
OPTIONS = [f"{group}={path.stem}" + (" model._target_=torchvision.models.MobileNetV2" if path.stem == "custom" else "")
           for group in ("model", "dataset", "optimizer", "regularizer", "schedule")
           for path in sorted((CONF / group).glob("*.yaml"))] + ["logger=csv"]  # the others need their packages


@pytest.mark.parametrize("option", OPTIONS)
def test_smoke_validates_with_every_option(make_config, option):
    # smoke sets keys some options lack (model.hidden, dataset.train_size): those options ignore them
    validate.check_config(make_config(SMOKE + option.split()))


def test_every_number_a_schema_declares_has_a_range():
    """A type says nothing of the range: every int and float key has a rule."""
    def numbers(cls, prefix):
        for key, annotation in refusals.fields(cls).items():
            inner, _ = refusals.optional(annotation)
            if hasattr(inner, "__dataclass_fields__"):
                yield from numbers(inner, f"{prefix}{key}.")
            elif inner in (int, float) or str(inner).startswith("typing.List"):
                yield prefix + key

    keys = set(numbers(schema.Config, ""))
    for group, options in schema.SCHEMAS.items():
        if group not in schema.COMBINABLE_GROUPS:
            for cls in options.values():
                keys.update(numbers(cls, f"{group}."))
    # model.pool_after's range depends on model.widths: a rule between keys
    assert keys and keys <= set(validate.RULES) | {"model.pool_after"}, keys - set(validate.RULES)


def test_the_hydra_key_is_ignored_and_a_check_is_cheap():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=SMOKE, return_hydra_config=True)
    validate.check_config(cfg)  # also loads and caches the conf/ files and the optimizer's class
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        validate.check_config(cfg)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.010


def test_check_config_says_a_value_that_does_not_resolve_in_one_line(make_config):
    with pytest.raises(ConfigError, match=r"^dataset\.root=\$\{oc\.env:SPARSESWEEP_NO_SUCH_VARIABLE\}: cannot be "
                                          r"resolved \(.*SPARSESWEEP_NO_SUCH_VARIABLE.*\)$"):
        validate.check_config(make_config(SMOKE + ["dataset=cifar10",
                                                   "dataset.root=${oc.env:SPARSESWEEP_NO_SUCH_VARIABLE}"]))


def test_an_unwritable_output_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    assert problem(*SMOKE, f"hydra.run.dir={tmp_path}/file/run", cwd=tmp_path) == \
        f"hydra.run.dir={tmp_path}/file/run: {tmp_path}/file is a file, not a directory: choose another " \
        f"hydra.run.dir=DIR"
    assert re.fullmatch(r"hydra\.run\.dir=/proc/x/run: cannot be created \(/proc: .*\): choose a directory you can "
                        r"write to: hydra\.run\.dir=DIR", problem(*SMOKE, "hydra.run.dir=/proc/x/run", cwd=tmp_path))
    assert problem(*SMOKE, "hydra.run.dir=", cwd=tmp_path) == "hydra.run.dir=: must be a directory, e.g. " \
                                                                "hydra.run.dir=outputs/run1"
    assert problem("-m", *SMOKE, "seed=0,1", "hydra.sweep.dir=/proc/x", cwd=tmp_path).startswith(
        "hydra.sweep.dir=/proc/x: cannot be created")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# An option in a --config-dir is checked like a built-in one: one that extends a built-in option, one that
# extends a schema, and one written without its schema, checked by the option its name names.
CONFIG_DIR_OPTIONS = {
    "optimizer/myadam.yaml": "defaults:\n  - adam\n  - _self_\n\nname: myadam\nlr: 2.0e-3\n",
    "model/tiny.yaml": "defaults:\n  - /schema_BasicNet@_here_\n  - _self_\n\nname: basicnet\nwidths: [8, 16]\n"
                       "width_multiplier: 1.0\npool_after: [1]\nhidden: 8\nnegative_slope: 0.0\n",
    "model/plain.yaml": "name: basicnet\nwidths: [8, 16]\nwidth_multiplier: 1.0\npool_after: [1]\nhidden: 8\n"
                        "negative_slope: 0.0\n",
    "model/mynet.yaml": "defaults:\n  - /schema_BasicNet@_here_\n  - _self_\n\nname: mynet\nwidths: [8]\n"
                        "width_multiplier: 1.0\npool_after: [1]\nhidden: 8\nnegative_slope: 0.0\n",
    "optimizer/slow.yaml": "defaults:\n  - adam\n  - _self_\n\nname: slow\nlr: fast\n",
    "model/typo.yaml": "defaults:\n  - /schema_BasicNet@_here_\n  - _self_\n\nname: basicnet\nwidths: [8]\n"
                       "width_multiplier: 1.0\npool_after: [1]\nhiden: 8\nnegative_slope: 0.0\n",
}


@pytest.mark.parametrize("overrides, message", [
    ("optimizer=myadam", None),
    ("optimizer=myadam optimizer.lr=inf", "optimizer.lr=inf: must be a finite number, e.g. optimizer.lr=0.001"),
    ("optimizer=myadam +optimizer.lrr=1", "optimizer.lrr=1: torch.optim.Adam has no argument lrr: did you mean "
                                          "optimizer.lr=1?"),
    ("optimizer=slow", "optimizer.lr=fast: must be a number, e.g. optimizer.lr=0.001"),
    ("model=tiny", None),
    ("model=tiny model.hidden=abc", "model.hidden=abc: must be an integer, e.g. model.hidden=256"),
    ("model=tiny model.widths=[8,0]", "model.widths=[8,0]: must be a non-empty list of positive integers, "
                                      "e.g. model.widths=[64,128,128,256,256,512,512]"),
    ("model=plain", None),
    ("model=plain model.hidden=abc", "model.hidden=abc: must be an integer, e.g. model.hidden=256"),
    ("model=mynet", "model.name=mynet: not an option of model: choose model=basicnet | custom | resnet50 | torchvision | vgg11 | vgg16"),
    ("model=typo", "model.hiden=8: model=basicnet has no key hiden: did you mean model.hidden=8?"),
])
def test_an_option_from_a_config_dir_is_checked_like_a_built_in_one(tmp_path, overrides, message):
    extra = tmp_path / "extra"
    for name, text in CONFIG_DIR_OPTIONS.items():
        (extra / name).parent.mkdir(parents=True, exist_ok=True)
        (extra / name).write_text(text)
    assert problem("--config-dir", str(extra), *SMOKE, *overrides.split(), cwd=tmp_path) == message


def test_printing_the_config_checks_only_that_it_composes(tmp_path):
    assert problem("--cfg", "job", "optimizer=adma", cwd=tmp_path) == \
        "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?"
    assert problem("--cfg", "job", "optimizer.lr=inf", cwd=tmp_path) is None  # printed as it is


def test_a_missing_config_dir_is_one_line(tmp_path):
    assert problem("--config-dir", str(tmp_path / "nope"), cwd=tmp_path) == \
        f"--config-dir={tmp_path}/nope: not a directory: give the folder that holds your config groups"


# What a user may type for a few keys of each type: numbers (inf, nan, huge), strings with odd characters,
# lists, booleans and null, written as Hydra's override grammar writes them.
def hydra_value(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_value, value)) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return refusals.show(value)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e20, 2**31, 2**64, -0.0]),
                    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
KEYS = ["optimizer.lr", "regularizer.l2", "batch_size", "seed", "device", "threads", "model.widths",
        "model.width_multiplier", "schedule.base_epochs", "dataset.resolution", "optimizer.betas",
        "performance.cuda_graph", "prune.after_training", "measure.selectivity_ratio", "optimizer", "model.name"]


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
@example(key="optimizer.lr", value="\n")  # a newline in a value stays escaped in the one line
def test_any_value_is_either_taken_or_refused_in_one_line_naming_the_key_and_nothing_is_written(key, value):
    with tempfile.TemporaryDirectory() as base:
        said = problem(*SMOKE, f"{key}={hydra_value(value)}", cwd=Path(base))
        assert said is None or ("\n" not in said and key in said), said
        assert list(Path(base).iterdir()) == []


def test_a_rejected_number_is_never_one_a_run_could_use():
    """The numeric refusals above are of values torch or the trainer could not use (a spot check of the
    property the Hypothesis test draws from)."""
    with tempfile.TemporaryDirectory() as base:
        for value in ("inf", "-inf", "nan"):
            assert "finite" in problem(*SMOKE, f"optimizer.lr={value}", cwd=Path(base))
        assert math.isfinite(1e30) and problem(*SMOKE, "optimizer.lr=1e30", cwd=Path(base)) is None


# The command line's path for every bad value (the messages are tested above) and for a run's missing data:
# one line, exit code 2, and nothing written: no run directory (so no identity, lock, .hydra or checkpoint).
ON_THE_COMMAND_LINE = [
    (["regularizer.l2=abc"], "regularizer.l2=abc: must be a number"),
    (["+optimizer.lrr=0.1"], "torch.optim.Adam has no argument lrr: did you mean optimizer.lr=0.1?"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: must be a finite number"),
    (["seed=99999999999999999999"], "seed=99999999999999999999: must be at most 4294967295"),
    (["optimizer=adma"], "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?"),
    (["optimizer=adam,sgd"], "optimizer=adam,sgd: a sweep needs -m"),
    (["hydra.run.dir=/proc/x"], "hydra.run.dir=/proc/x: cannot be created"),
    (["-m", "seed=0,1", "hydra.sweep.dir=/proc/x"], "hydra.sweep.dir=/proc/x: cannot be created"),
    (["dataset=cifar10", "dataset.root=/nonexistent/cifar"],
     "missing data: cifar10: not in /nonexistent/cifar/cifar-10-batches-py: add dataset.download=true to fetch it"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", ON_THE_COMMAND_LINE, ids=[" ".join(args) for args, _ in ON_THE_COMMAND_LINE])
def test_bad_values_give_a_one_line_error_on_the_command_line_before_training(tmp_path, args, message):
    run_dir = tmp_path / "run"
    flags = [arg for arg in args if arg.startswith("-")]  # Hydra's flags come before the overrides
    code, output = cli("sparsesweep", *flags, *SMOKE, f"hydra.run.dir={run_dir}", *(a for a in args if a not in flags),
                       cwd=tmp_path)
    assert code == 2
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], output
    assert "Traceback" not in output and "download=True" not in output  # sparsesweep's line, not torchvision's
    assert output.splitlines() == errors and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_in_a_sweep_an_invalid_job_is_recorded_with_its_line_and_the_valid_one_runs(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer.lr=inf,0.001", f"hydra.sweep.dir={sweep}",
                       cwd=tmp_path)
    assert code == 1, output  # an invalid run is a run that could not start (docs/sweeps.md, exit status)
    assert "#0 invalid (not launched): optimizer.lr=inf: must be a finite number, e.g. optimizer.lr=0.001" in output
    statuses = {run: (results["status"], results.get("error")) for run, results in read_results(sweep).items()}
    assert statuses == {"optimizer.lr=inf": ("failed", "optimizer.lr=inf: must be a finite number, e.g. "
                                                       "optimizer.lr=0.001"),
                        "optimizer.lr=0.001": ("completed", None)}
    assert not any((sweep / "optimizer.lr=inf").glob(".lock"))
