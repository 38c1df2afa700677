"""Every config option composes (Hydra's compose API) and validates, and the design card's sweep runs for real."""
import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF, ROOT, cli, read_results
import sparsesweep
from sparsesweep import refusals, schema, validate
from sparsesweep.errors import ConfigError

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
    with pytest.raises(ConfigError, match=r"^regularizer\.l2=0\.0001: regularizer=wd has no key l2: "
                                          r"use regularizer=l2 "):
        validate.check_config(make_config(["regularizer=wd", "regularizer.l2=1e-4"]))


@pytest.mark.parametrize("group, option", [(g, o) for g, o in OPTIONS if g != "experiment"],
                         ids=[f"{g}={o}" for g, o in OPTIONS if g != "experiment"])
def test_every_option_composes_onto_its_registered_schema(make_config, group, option):
    """schema.SCHEMAS names every built-in option's schema, and the option's file extends it: the node is of
    that type (schedules extend step's)."""
    override = f"logger=[{option}]" if group in schema.COMBINABLE_GROUPS else f"{group}={option}"
    node = make_config([override])[group]
    node = node[option] if group in schema.COMBINABLE_GROUPS else node
    assert OmegaConf.get_type(node) is schema.SCHEMAS[group][option]
    assert set(node) == set(refusals.fields(schema.SCHEMAS[group][option]))  # the schema adds no key


def test_the_schema_types_every_value_as_it_composes(make_config):
    cfg = make_config(["optimizer=sgd", "optimizer.momentum=0", "regularizer.l2=0", "prune.after_training=yes"])
    assert cfg.optimizer.momentum == 0.0 and type(cfg.optimizer.momentum) is float
    assert type(cfg.regularizer.l2) is float and cfg.prune.after_training is True
    with pytest.raises(ConfigCompositionException):
        make_config(["batch_size=abc"])


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


HELP_GROUPS = ["model", "dataset", "optimizer", "regularizer", "schedule", "experiment", "logger"]


# One process runs the command line three ways and says after each whether torch is imported yet.
COMMANDS = {"help": ["--help"], "bad value": ["+experiment=smoke", "optimizer.lr=inf"]}


@pytest.fixture(scope="module")
def command_lines() -> dict[str, tuple[int, str, bool]]:
    """{command: (exit code, output, whether torch was imported)}."""
    import subprocess
    import sys

    code = ("import contextlib, io, runpy, sys\n"
            f"for name, args in {COMMANDS!r}.items():\n"
            "    out, sys.argv = io.StringIO(), ['sparsesweep', *args]\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
            "        try:\n"
            "            runpy.run_module('sparsesweep', run_name='__main__')\n"
            "            status = 0\n"
            "        except SystemExit as stop:\n"
            "            status = stop.code or 0\n"
            "    print(repr((name, status, out.getvalue(), 'torch' in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import ast

    return {name: rest for name, *rest in map(ast.literal_eval, done.stdout.splitlines())}


def test_help_says_what_it_does_every_group_with_its_options_the_example_and_where_results_go(command_lines):
    code, output, torch_imported = command_lines["help"]
    assert code == 0 and not torch_imported, output
    assert "filters that never fire" in output and "powered by Hydra" not in output
    assert output.startswith(f"sparsesweep {sparsesweep.__version__}: train")  # the version, kept in one place
    for group in HELP_GROUPS:
        options = sorted(path.stem for path in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in output, group
    assert "python -m sparsesweep -m optimizer=adam,sgd,adamax regularizer.l2=1e-4,1e-5" in output
    assert "outputs/<its overrides>/" in output and "multirun/<its experiment and" in output
    assert "schema_" not in output  # the schemas are no config group


def test_refusing_a_value_imports_no_torch(command_lines):
    code, output, torch_imported = command_lines["bad value"]
    assert code == 2 and "optimizer.lr=inf: must be a finite number" in output and not torch_imported, output


# docs/configuration.md's own option: a file in a folder of the user's, extending a built-in option.
ADAM_FAST = "defaults:\n  - adam\n  - _self_\n\nname: adam_fast\nlr: 3.0e-3\n"


def test_a_config_dir_adds_the_users_own_options_to_the_built_in_ones(tmp_path):
    (tmp_path / "myconf" / "optimizer").mkdir(parents=True)
    (tmp_path / "myconf" / "optimizer" / "adam_fast.yaml").write_text(ADAM_FAST)
    code, output = cli("sparsesweep", "--config-dir", "myconf", "--cfg", "job", "+experiment=smoke",
                       "optimizer=adam_fast", cwd=tmp_path)
    assert code == 0 and "name: adam_fast" in output and "lr: 0.003" in output, output
    code, output = cli("sparsesweep", "--config-dir", "myconf", "--help", cwd=tmp_path)
    assert code == 0 and "optimizer: adadelta, adafactor, adagrad, adam, adam_fast, adamax," in output, output
    code, output = cli("sparsesweep", "--config-dir", "myconf", "+experiment=smoke", "optimizer=adam_fats",
                       cwd=tmp_path)
    assert code == 2 and output.strip().endswith(
        "optimizer=adam_fats: not an option of optimizer: did you mean optimizer=adam_fast?"), output


def test_the_configuration_page_names_every_group_option_and_top_level_key():
    page = (ROOT / "docs" / "configuration.md").read_text()
    for group in HELP_GROUPS:
        assert f"### `{group}`" in page, group
        for path in (CONF / group).glob("*.yaml"):
            assert f"`{path.stem}`" in page, f"{group}={path.stem}"
    for key, annotation in refusals.fields(schema.Config).items():
        nested = refusals.optional(annotation)[0]
        keys = [f"{key}.{sub}" for sub in refusals.fields(nested)] if hasattr(nested, "__dataclass_fields__") \
            else [key]
        for dotted in keys:
            assert f"`{dotted}`" in page, dotted


def test_printing_a_runs_config_names_the_data_it_would_not_find(tmp_path):
    code, output = cli("sparsesweep", "--cfg", "job", "+experiment=smoke", "dataset=cifar10",
                       f"dataset.root={tmp_path / 'nothing'}", cwd=tmp_path)
    lines = output.strip().splitlines()
    assert code == 0 and "width_multiplier: 0.125" in output, output
    assert lines[-1].startswith(f"missing: cifar10: not in {tmp_path / 'nothing'}/cifar-10-batches-py: add "
                                "dataset.download=true"), output
    code, output = cli("sparsesweep", "--cfg", "job", "+experiment=smoke", cwd=tmp_path)  # rendered: never missing
    assert code == 0 and "missing:" not in output, output


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    reader, writer = os.pipe()
    os.close(reader)  # as `| head -1` does once it has its line: every write now fails
    done = subprocess.run([sys.executable, "-m", "sparsesweep", "--help"], cwd=ROOT, stdout=writer,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    os.close(writer)
    assert (done.returncode, done.stderr) == (1, "")
