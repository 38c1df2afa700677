"""Every command line the README and docs/ show is run here, as a user would type it, on this repository's own
fixtures: a sweep as a dry run (nothing trains), a single run through the checks it passes before it trains
(all but its data, which this machine may lack), the analysis commands on a small sweep of real run
directories, make targets with `make -n`. A command no rule below knows fails the test: a new command in the
docs gets its run here."""
import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, run_main
from rundirs import Sweep, train_smoke_run

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = r"(?:[A-Z_]+=\S+ )?(?:python|make|pip) "
# Shown but not run here, each with where it is run instead or why it cannot be.
RUN_ELSEWHERE = {
    "pip": "installs from package indexes; `make install-cpu` and the installed-wheel test run pip for real",
    "python tests/test_reference.py": "rewrites the stored reference; tests/test_reference.py runs the same training",
    "python benchmarks/gpu_check.py --out /tmp/gc --dry-run": "tests/test_gpu_check.py runs the dry run",
}


def commands() -> list[tuple[str, str]]:
    """(the pages, command) for every command line of a code block (continuations joined, `$ ` prompts and
    comments dropped) and every command in an inline code span: each command once."""
    found = []
    for page in PAGES:
        text, block, pending = page.read_text(), False, ""
        for line in text.splitlines():
            if line.startswith("```"):
                block = not block
                continue
            if not block:
                continue
            line = pending + line.strip().removeprefix("$ ")
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1].strip() + " "
                continue
            if re.match(PROGRAMS, line):
                found.append((page.name, without_comment(line)))
        found += [(page.name, " ".join(span.split())) for span in re.findall(rf"`({PROGRAMS}[^`]*)`", text)]
    pages: dict[str, list[str]] = {}
    for page, command in found:
        pages.setdefault(command, []).append(page)
    return sorted((", ".join(sorted(set(on))), command) for command, on in pages.items())


def without_comment(line: str) -> str:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return shlex.join(list(lexer))


COMMANDS = commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 50 and any("optimizer=adam,sgd,adamax regularizer.l2=1e-4,1e-5" in c for _, c in COMMANDS)


# ---- what the commands run on --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("docs")
    template = train_smoke_run(base / "template")
    sweep = Sweep(base / "sweep", template)
    for optimizer in ("adam", "sgd"):
        for seed in range(3):
            for coefficient in (1e-3, 1e-4):
                sweep.add(optimizer, seed, config={"regularizer.l2": coefficient}, coefficient=coefficient,
                          dataset="cifar10")
    package = base / "user" / "mypackage"  # the custom network models.md names
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "from torch import nn\n\n\nclass MyNet(nn.Sequential):\n"
        "    def __init__(self, depth=2, width=8, in_channels=3, num_classes=10):\n"
        "        layers = [nn.Conv2d(in_channels, width, 3), nn.BatchNorm2d(width), nn.ReLU()]\n"
        "        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n")
    return {"base": base, "template": template, "sweep": sweep.root, "user": base / "user"}


def positional(args: list[str], value_options=("--out", "--format", "--where", "--model", "--threshold",
                                               "--device", "--data-root", "--steps", "--coefficients", "--to",
                                               "--tracking-uri", "--experiment", "--project", "--entity", "--mode")):
    """Indices of the arguments that are not options or option values."""
    taken, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg in value_options:
            skip = True
        elif not arg.startswith("-"):
            taken.append(index)
    return taken


def literal(args: list[str]) -> list[str]:
    """A synopsis made literal: `[...]` and `...` dropped, an optional `[--opt VALUE]` taken, `a|b` its first."""
    text = " ".join(args).replace("[...]", "").replace("...", "")
    text = re.sub(r"\[([^\]]*)\]", r"\1", text)
    return [word.split("|")[0] if "|" in word and "=" not in word else word for word in text.split()]


# ---- how each program is run ---------------------------------------------------------------------------------


def sparsesweep(args: list[str], env: dict, workspace, tmp_path) -> tuple[int, str, int]:
    """A sweep: its dry run. A single run: the checks before it trains. Help: as it is."""
    from hydra.core.global_hydra import GlobalHydra

    from sparsesweep import __main__ as entry, hydra_compat

    args = [arg.replace("+experiment=NAME", "+experiment=smoke") for arg in args if arg not in ("...", "[...]")]
    if "wandb" in " ".join(args):
        pytest.importorskip("wandb")
    if "--help" in args or "--cfg" in args:
        code, output = run_main([*args, f"hydra.run.dir={tmp_path}/run"])
        return code, output, 0
    experiments = [arg.split("=", 1)[1] for arg in args if arg.startswith("+experiment=")]
    sweeps = "-m" in args or any(
        OmegaConf.load(CONF / "experiment" / f"{name}.yaml").get("hydra", {}).get("mode") == "MULTIRUN"
        for name in experiments)
    if sweeps:
        code, output = run_main([*args, "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep"])
        assert not re.search(r"^#\d+\s+invalid", output, re.MULTILINE), output
        return code, output, 0
    sys.path.insert(0, str(workspace["user"]))
    try:
        said = entry.refusal(hydra_compat.get_args_parser().parse_args([*args, f"hydra.run.dir={tmp_path}/run"]))
    finally:
        sys.path.remove(str(workspace["user"]))
        GlobalHydra.instance().clear()
    # Passed every check; its data (CIFAR-10 and the like) may be what this machine lacks.
    return (0 if said is None or said.startswith("missing data: ") else 2), said or "", 0


def analysis(args: list[str], env, workspace, tmp_path) -> tuple[int, str, int]:
    from multirun_analysis.__main__ import main

    args = literal(args)
    places = positional(args)[1:] if args and args[0] in COMMANDS_OF_ANALYSIS else positional(args)
    if not places:
        args = [*args, "--help"]
    for index in places:
        args[index] = str(workspace["sweep"])
    if "--out" in args:
        out = args.index("--out") + 1
        args[out] = str(tmp_path / Path(args[out]).name)
    offline = {}
    if args[0] == "export" and "--to" in args:  # the tracker's store (mlruns) in tmp_path, no network
        pytest.importorskip(args[args.index("--to") + 1])
        offline = {"WANDB_MODE": "offline", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    try:
        with contextlib.chdir(tmp_path), mock.patch.dict(os.environ, offline):
            code = main(args)
    except SystemExit as stop:  # --help
        code = stop.code
    return code, "", 0


def inspect(args, env, workspace, tmp_path) -> tuple[int, str, int]:
    from sparsesweep import inspect as inspect_module

    args = literal(args)
    if not args:
        args = ["--help"]
    elif args[0].endswith(".pt"):
        weights = tmp_path / "weights.pt"
        if not weights.exists():
            import torch

            from sparsesweep._torchvision import import_torchvision

            torch.save(import_torchvision().models.resnet18().state_dict(), weights)
        args[0] = str(weights)
    else:
        args[0] = str(workspace["template"])
    try:
        return inspect_module.main(args), "", 0
    except SystemExit as stop:
        return stop.code, "", 0


def script(args, env, workspace, tmp_path) -> tuple[int, str, int]:
    """python -m sparsesweep.prune / .synthetic, python benchmarks/...: real processes, small where they are
    long (prune on one run; the synthetic experiment for 200 steps; the collector on 50 runs; a plan of 10 runs;
    the cost of one grid)."""
    args = literal(args)
    module = args[1] if args[0] == "-m" else args[0]
    expected = 0
    if module == "sparsesweep.prune":
        if len(args) == 2:
            args.append("--help")
        else:
            args = [*args[:2], str(workspace["template"]), *(str(tmp_path) if a == "DIR" else a for a in args[3:])]
    elif module == "sparsesweep.synthetic":
        args = [*args, "--steps", "200", "--out", str(tmp_path / "synthetic")]
    elif module.endswith("collector.py"):  # it exits 1 when a command fails or leaves out a run
        args = [*args, "--runs", "50", "--commands", "status", "summary", "table1"]
    elif module.endswith("trackers.py"):
        args = [*args, "--repeats", "1", "--epochs", "2", "--loggers", "csv"]
    elif module.endswith("plan.py"):
        args = [*args, "--runs", "10"]
    elif module.endswith("cost_model.py"):
        args = [*args, "--grids", "table2"]
    elif module.endswith("gpu_check.py"):
        args = [*args[:1], "--out", str(tmp_path / "gc")]
        expected = 0 if _has_cuda() else 3  # without CUDA: one line, exit 3
    if args[0].endswith(".py"):
        args[0] = str(ROOT / args[0])
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, env={**os.environ, **env,
                                                                      "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr, expected


def make(args, env, workspace, tmp_path) -> tuple[int, str, int]:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr, 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS_OF_ANALYSIS = ("status", "claims", "report", "runs", "plots", "table1", "table2", "table3", "table4",
                        "table5", "table6", "table7", "difficulty", "summary", "export")
# (what the command line starts with, how it is run, whether it is slow)
RULES = [
    ("python -m sparsesweep.inspect", inspect, False),
    ("python -m sparsesweep.prune", script, True),
    ("python -m sparsesweep.synthetic", script, True),
    ("python -m sparsesweep", sparsesweep, False),
    ("python -m multirun_analysis", analysis, False),
    ("python benchmarks/", script, True),
    ("make ", make, False),
]
# Long, or run in the fast tier by tests of their own (the report's and the figures' tests).
SLOW = ("+experiment=table", "+experiment=claims", "+experiment=architectures", "+experiment=difficulty",
        "multirun_analysis report", "multirun_analysis plots", "multirun_analysis export", "benchmarks/trackers.py")


def cases():
    for page, command in COMMANDS:
        reason = RUN_ELSEWHERE.get(command) or RUN_ELSEWHERE.get(command.split()[0] if "=" not in
                                                                 command.split()[0] else command.split()[1])
        rule = next(((run, slow) for start, run, slow in RULES if command.startswith(start) or
                     re.sub(r"^[A-Z_]+=\S+ ", "", command).startswith(start)), None)
        slow = rule is not None and (rule[1] or any(s in command for s in SLOW))
        yield pytest.param(page, command, reason, rule and rule[0], id=f"{page}: {command}"[:120],
                           marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("page, command, elsewhere, run", list(cases()))
def test_every_command_the_docs_show_runs(page, command, elsewhere, run, workspace, tmp_path):
    if elsewhere:
        return  # RUN_ELSEWHERE says where
    assert run is not None, f"{page} shows `{command}`, which no rule of this test runs: add one"
    words = shlex.split(command.split(" | ")[0].removesuffix(" &"))  # in the background: the same command
    env = {}
    while re.fullmatch(r"[A-Z_]+=\S+", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    start = 1 if words[0] == "make" else 3 if words[1] == "-m" else 2
    if run is script:
        start = 1
    code, output, expected = run(words[start:], env, workspace, tmp_path)
    assert code == expected, f"{page}: `{command}` exited {code}: {output}"
