"""sparsesweep as a user gets it from `pip install`: `python -m build` makes an sdist and, from it, a wheel out of
a copy of the checkout; the wheel goes into a fresh venv; from a directory outside the checkout both commands
show the same help and exit codes, a sweep of two runs trains (one of them with an option of the user's own,
from --config-dir), and the collector, status, inspect and the report read it.

What the venv holds, honestly: the wheel, installed by pip with its console scripts, and nothing else of
sparsesweep. Its dependencies are not downloaded again (minutes, gigabytes for a CUDA torch): the venv sees
this environment's third-party packages through a path entry, not through its .pth files, so that the
checkout's editable install (a .pth import hook) stays invisible. Every requirement the wheel declares is
checked satisfied there, and test_packaging.py checks that every module the packages import is declared: what
a real `pip install` would bring. Every import is checked to come from the venv."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

import sparsesweep
from conftest import ROOT

pytestmark = pytest.mark.slow

VERSION = sparsesweep.__version__
ADAM_FAST = "defaults:\n  - adam\n  - _self_\n\nname: adam_fast\nlr: 3.0e-3\n"  # docs/configuration.md's
SWEEP = "multirun/smoke,optimizer=adam,adam_fast"


def checkout_files() -> list[str]:
    """The checkout's files as a clean clone has them: tracked, and new ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to build from")
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """dist/ with the sdist and the wheel `python -m build` makes from a copy of the checkout (the wheel from the
    sdist: what the sdist lacks, the wheel lacks too). No build isolation: setuptools comes from the test extra."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(base / "dist"),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base / "dist"


def fresh_venv(root: Path, requirement: str, *options) -> Path:
    """A fresh venv where pip installed `requirement` alone (see the module's docstring); returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                          *([site.getusersitepackages()] if site.getusersitepackages() in sys.path else [])])
    (purelib / "_test_environment.pth").write_text("".join(f"{path}\n" for path in ours))  # paths only: no hooks
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-index", *options, requirement], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "bin"


@pytest.fixture(scope="module")
def venv(built) -> Path:
    (wheel,) = built.glob("*.whl")
    return fresh_venv(built.parent / "venv", str(wheel))


@pytest.fixture(scope="module")
def user(venv):
    """run(*command) in a directory of the user's, outside the checkout, with the venv's bin/ first on PATH and no
    PYTHONPATH; returns (exit code, stdout + stderr)."""
    home = venv.parent.parent / "user"
    home.mkdir()
    assert not home.resolve().is_relative_to(ROOT)
    environment = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "LINES",
                                                                        "VIRTUAL_ENV", "PYTHONHOME")},
                   "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command, timeout=600):
        done = subprocess.run([str(venv / command[0]) if (venv / command[0]).exists() else command[0],
                               *command[1:]], cwd=home, env=environment, capture_output=True, text=True,
                              timeout=timeout)
        return done.returncode, done.stdout + done.stderr
    run.home = home
    return run


def test_the_build_gives_an_sdist_and_a_wheel_holding_every_file_a_run_needs(built):
    (sdist,) = built.glob("sparsesweep-*.tar.gz")
    (wheel,) = built.glob("sparsesweep-*.whl")
    assert sdist.name == f"sparsesweep-{VERSION}.tar.gz" and wheel.name == f"sparsesweep-{VERSION}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [path.relative_to(ROOT).as_posix() for folder in ("sparsesweep/conf", "multirun_analysis/paper",
                                                                "multirun_analysis/templates")
              for path in (ROOT / folder).rglob("*") if path.is_file()]
    needed += [path.relative_to(ROOT).as_posix() for package in ("sparsesweep", "multirun_analysis", "rundir_format",
                                                                  "hydra_plugins") for path in (ROOT / package).rglob("*.py")]
    assert len(needed) > 100 and not set(needed) - names, sorted(set(needed) - names)[:5]
    info = f"sparsesweep-{VERSION}.dist-info"
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    for line in (f"Version: {VERSION}", "License-Expression: MIT", "Provides-Extra: trackers", "Provides-Extra: test",
                 "Classifier: Intended Audience :: Science/Research", "Requires-Dist: hydra-core"):
        assert any(shown.startswith(line) for shown in metadata.splitlines()), line
    assert "pip install \"sparsesweep @ git+" in metadata  # the README, as the project's description
    assert f"{info}/licenses/LICENSE" in names
    scripts = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "sparsesweep = sparsesweep.__main__:run_command" in scripts
    assert "sparsesweep-analysis = multirun_analysis.__main__:run_command" in scripts


def test_everything_is_imported_from_the_venv_and_every_requirement_is_met(venv, user):
    check = ("import json, sys\nfrom importlib import metadata\nfrom packaging.requirements import Requirement\n"
             "import sparsesweep, multirun_analysis, rundir_format, hydra_plugins.sparsesweep_sweeper as s\n"
             "unmet = [line for line in metadata.requires('sparsesweep') if 'extra ==' not in line and\n"
             "         metadata.version(Requirement(line).name) not in Requirement(line).specifier]\n"
             "print(json.dumps({'files': [m.__file__ for m in (sparsesweep, multirun_analysis, rundir_format, s)],\n"
             "  'conf': str(sparsesweep.CONF_DIR), 'unmet': unmet, 'hooks': [repr(f) for f in sys.meta_path],\n"
             "  'dist': str(metadata.distribution('sparsesweep').locate_file(''))}))")
    code, output = user("python", "-c", check)
    assert code == 0, output
    found = json.loads(output)
    site_packages = Path(found["dist"])
    assert site_packages.is_relative_to(venv.parent)
    assert all(Path(file).is_relative_to(site_packages) for file in found["files"]), found["files"]
    assert Path(found["conf"]).is_relative_to(site_packages) and (Path(found["conf"]) / "config.yaml").is_file()
    assert not any("editable" in hook.lower() for hook in found["hooks"]), found["hooks"]
    assert found["unmet"] == []


def without_times(output: str) -> str:
    """A log line's time stamp changes between two runs of a command."""
    return re.sub(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]", "[TIME]", output, flags=re.M)


@pytest.mark.parametrize("script, module, args, exit_code", [
    ("sparsesweep", "sparsesweep", ["--help"], 0),
    ("sparsesweep", "sparsesweep", ["+experiment=smoke", "optimizer=adma"], 2),
    ("sparsesweep-analysis", "multirun_analysis", ["--help"], 0),
    ("sparsesweep-analysis", "multirun_analysis", ["status", "nowhere"], 2),
])
def test_each_command_is_the_same_as_python_m(user, script, module, args, exit_code):
    by_script, by_module = user(script, *args), user("python", "-m", module, *args)
    assert by_script[0] == by_module[0] == exit_code, by_script
    assert without_times(by_script[1]) == without_times(by_module[1])
    if args == ["--help"] and script == "sparsesweep":
        assert by_script[1].startswith(f"sparsesweep {VERSION}: train")
        assert "experiment: architectures, architectures_cpu, claims" in by_script[1]  # the config tree came along
    if exit_code == 2 and script == "sparsesweep":
        assert by_script[1].strip().endswith(
            "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?")


def test_a_sweep_with_an_option_of_the_users_own_then_the_collector_status_inspect_and_report(user):
    (user.home / "myconf" / "optimizer").mkdir(parents=True)
    (user.home / "myconf" / "optimizer" / "adam_fast.yaml").write_text(ADAM_FAST)
    code, output = user("sparsesweep", "-m", "--config-dir", "myconf", "+experiment=smoke",
                        "optimizer=adam,adam_fast")
    # The grid sweeper (the sweep's directory named by its command) and the local launcher: both plugins found.
    assert code == 0 and f"Sweep {SWEEP}: 2 completed" in output and "Launching 2 jobs locally" in output, output
    sweep = user.home / SWEEP
    runs = {json.loads(path.read_text())["optimizer"]: json.loads(path.read_text())
            for path in sweep.glob("*/results.json")}
    assert set(runs) == {"adam", "adam_fast"} and runs["adam_fast"]["config"]["optimizer"]["lr"] == 0.003
    made = runs["adam"]["provenance"]
    assert (made["sparsesweep"], made["git_commit"], made["git_dirty"]) == (VERSION, None, None)  # a wheel
    assert (made["torch"], made["device"], made["python"]) == (torch.__version__, "cpu", sys.version.split()[0])

    code, output = user("sparsesweep-analysis", SWEEP)
    lines = output.splitlines()
    assert code == 0 and sum("completed" in line for line in lines) == 2, output
    assert lines[-1].startswith(f"made by sparsesweep {VERSION}, torch {torch.__version__} · "), output
    code, output = user("sparsesweep-analysis", "status", SWEEP)
    assert code == 0 and "2 completed" in output and f"made by sparsesweep {VERSION}" in output, output
    code, output = user("python", "-m", "sparsesweep.inspect", f"{SWEEP}/+experiment=smoke,optimizer=adam")
    assert code == 0 and "│ total " in output and "(training set)" in output, output
    code, output = user("sparsesweep-analysis", "difficulty", SWEEP, "--format", "csv")  # the paper's table
    assert code == 0 and re.search(r"^clean,[\d.]+,,1,70\.0,", output, re.M), output
    code, output = user("sparsesweep-analysis", "report", SWEEP, "--out", "report.html")
    page = (user.home / "report.html").read_text()
    assert code == 0 and "Task difficulty" in page and f"made by sparsesweep {VERSION}" in page, output


def test_a_copy_installed_from_git_records_the_commit_it_came_from(built):
    """The README's install for a cluster, `pip install "sparsesweep @ git+URL@REV"`, with this checkout's URL."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # The bare URL: `NAME @ URL` wants a host, which a file:// URL lacks (pip's own parser refuses it).
    bin_dir = fresh_venv(built.parent / "venv-git", f"git+file://{ROOT}@{head}", "--no-build-isolation")
    done = subprocess.run([bin_dir / "python", "-c", "import json; from sparsesweep import provenance; "
                           "print(json.dumps(provenance.describe()))"], cwd=built.parent, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["git_commit"], made["git_dirty"], made["sparsesweep"]) == (head, False, VERSION)
