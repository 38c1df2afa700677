"""What a wheel holds and asks for, checked on the checkout (the wheel itself, installed and run from another
directory: test_installed.py): every module the packages import is a declared dependency (the one a
`pip install` brings), every config file, paper table and template is package data, the version is kept in one
place, and the two commands are those of `python -m`."""
import ast
import functools
import re
import sys
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import sparsesweep
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGES = ("sparsesweep", "multirun_analysis", "rundir_format", "hydra_plugins")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements) -> set[str]:
    return {canonical(Requirement(line).name) for line in requirements}


def imports(path: Path):
    """(module, imported when the module is: not inside a function) for each absolute import in a file."""
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                yield from ((alias.name, not in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, not in_function
            yield from visit(child, inner)
    yield from visit(ast.parse(path.read_text()), False)


@functools.cache
def providers_by_top_level() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    """The installed distributions that provide `module` (for a namespace package, hydra_plugins.X: those whose
    files hold X)."""
    top, *rest = module.split(".")
    candidates = providers_by_top_level().get(top, [])
    if top != "hydra_plugins":
        return {canonical(name) for name in candidates}
    folder = f"hydra_plugins/{rest[0]}/"
    return {canonical(name) for name in candidates
            if any(str(file).startswith(folder) for file in metadata.distribution(name).files or ())}


def third_party_imports() -> dict[str, bool]:
    """{module: whether some file imports it when it is imported} for every import of another project."""
    found: dict[str, bool] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for module, eager in imports(path):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in PACKAGES[:3] or module.startswith(
                        ("hydra_plugins.sparsesweep_", "__future__")) or module == "hydra_plugins":
                    continue
                key = ".".join(module.split(".")[:2]) if top == "hydra_plugins" else top
                found[key] = found.get(key, False) or eager
    return found


def test_every_module_the_packages_import_is_a_declared_dependency():
    # The installed-package test installs the wheel alone (--no-deps): this is what keeps that honest.
    core = declared(PROJECT["dependencies"])
    extras = set().union(*(declared(lines) for name, lines in PROJECT["optional-dependencies"].items()
                           if name != "test"))
    found = third_party_imports()
    assert {"torch", "hydra", "pydantic", "yaml", "hydra_plugins.hydra_submitit_launcher"} <= set(found)
    for module, eager in found.items():
        providers = distributions(module)
        assert providers, f"{module}: no installed distribution provides it"
        allowed = core if eager else core | extras  # an extra only for what is imported when it is used
        assert providers & allowed, f"{module} ({', '.join(sorted(providers))}) is not declared in pyproject.toml " \
                                    f"{'dependencies' if eager else 'dependencies or extras'}"


def packaged(relative: Path, pattern: str) -> bool:
    """Whether a [tool.setuptools.package-data] glob takes the file (`*` stays within one folder)."""
    parts = Path(pattern).parts
    return len(relative.parts) == len(parts) and all(map(fnmatch, relative.parts, parts))


def test_every_data_file_of_the_packages_is_package_data():
    data = [path.relative_to(ROOT) for package in PACKAGES for path in (ROOT / package).rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert sum(path.suffix == ".yaml" for path in data) == len(list(sparsesweep.CONF_DIR.rglob("*.yaml")))
    for path in data:
        package, *inside = path.parts
        assert any(packaged(Path(*inside), pattern) for pattern in SETUPTOOLS["package-data"].get(package, [])), \
            f"{path}: not in [tool.setuptools.package-data]"


def test_the_version_is_kept_in_one_place_and_the_commands_are_those_of_python_m():
    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "sparsesweep.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", sparsesweep.__version__)
    assert PROJECT["scripts"] == {"sparsesweep": "sparsesweep.__main__:run_command",
                                  "sparsesweep-analysis": "multirun_analysis.__main__:run_command"}
    assert {"trackers", "test"} <= set(PROJECT["optional-dependencies"])
    assert (ROOT / PROJECT["license-files"][0]).is_file() and PROJECT["license"] == "MIT"
