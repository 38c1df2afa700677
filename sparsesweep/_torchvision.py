"""The one place that imports torchvision.

PyPI's torchvision wheels are CUDA builds. Beside a CPU-only torch (the pinned CI install) their import
fails with "operator torchvision::nms does not exist", raised while registering meta/autograd kernels for
the detection ops. sparsesweep needs none of those ops (only datasets), so in that case the two
registration modules are replaced by empty stand-ins and the import is retried. With matching
torch/torchvision builds the first import succeeds and nothing is stubbed.
"""
import sys
import types

_OPTIONAL_KERNEL_MODULES = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def import_torchvision():
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for name in _OPTIONAL_KERNEL_MODULES:
            sys.modules[name] = types.ModuleType(name)
        import torchvision
    return torchvision


def mismatch() -> str | None:
    """None when torch and torchvision import together, as a user's own script imports them (without this
    module's stand-ins); else one line naming the two builds and the command that installs a matching pair."""
    import importlib.metadata
    import importlib.util
    import re
    import subprocess

    tried = subprocess.run([sys.executable, "-c", "import torch, torchvision"], capture_output=True, text=True)
    if tried.returncode == 0:
        return None
    reason = (tried.stderr.strip().splitlines() or ["no message"])[-1]
    builds = {}
    for package in ("torch", "torchvision"):
        spec = importlib.util.find_spec(package)
        version_file = spec and spec.submodule_search_locations and \
            f"{list(spec.submodule_search_locations)[0]}/version.py"
        try:  # the build's own record (torchvision's dist metadata leaves out its +cuXXX)
            with open(version_file) as file:
                builds[package] = re.search(r"__version__ = '([^']+)'", file.read())[1]
        except (OSError, TypeError):
            builds[package] = importlib.metadata.version(package)
    base = {package: version.split("+")[0] for package, version in builds.items()}
    return (f"torch {builds['torch']} and torchvision {builds['torchvision']} do not import together ({reason}); "
            f"a matching CPU pair: pip install --force-reinstall --index-url https://download.pytorch.org/whl/cpu "
            f"torch=={base['torch']} torchvision=={base['torchvision']}")


if __name__ == "__main__":  # make install-cpu: the pair it installed, checked as a user's script would use it
    line = mismatch()
    if line:
        print(line, file=sys.stderr)
        sys.exit(1)
    print("torch and torchvision import together")
