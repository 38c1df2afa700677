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
