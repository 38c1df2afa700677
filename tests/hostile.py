"""Hostile run directories for tests/test_hostile*.py: a model class whose import and construction leave a marker
file (what a `_target_` read from a received run directory would run), things that are no regular file (FIFOs,
device links and nodes, sparse files of a terabyte), text full of terminal escape sequences, and a deadline for
calls that must not hang."""
import contextlib
import os
import signal
import stat
import sys
import textwrap
from pathlib import Path

TARGET_MODULE = "hostile_target"
TARGET = f"{TARGET_MODULE}.Net"
# ESC sequences (CSI: clear the screen, erase the line, move the cursor; OSC: retitle the terminal, plant a link),
# C1 controls (U+009B is a CSI on its own), a bell, a newline and a carriage return, a bidi override.
ESCAPES = ["\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\", "\x9b2K",
           "\x1b[1A\x1b[2K", "a\nb", "c\rd", "\u202eevil", "\x07\x08\x7f"]
RAW_CONTROL = "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"  # what must never reach a terminal raw


def write_target(directory: Path, marker: Path) -> Path:
    """hostile_target.py in `directory`: importing it, or building its Net, appends a line to `marker`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{TARGET_MODULE}.py").write_text(textwrap.dedent(f"""\
        import pathlib

        from torch import nn

        MARKER = pathlib.Path({str(marker)!r})
        with MARKER.open("a") as marker:
            marker.write("imported\\n")


        class Net(nn.Module):
            def __init__(self, in_channels=3, num_classes=10):
                super().__init__()
                with MARKER.open("a") as marker:
                    marker.write("built\\n")
                self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

            def forward(self, x):
                return self.body(x)
        """))
    return directory


def custom_model(name: str = "net") -> dict:
    """A model config naming the hostile target, as a run directory's files would hold it."""
    return {"name": name, "source": "custom", "_target_": TARGET}


def fifo(path: Path) -> None:
    replace(path)
    os.mkfifo(path)


def device_link(path: Path) -> None:
    """A symbolic link to /dev/zero: read whole, it never ends."""
    replace(path)
    os.symlink("/dev/zero", path)


def device_node(path: Path) -> bool:
    """A character device node like /dev/zero (root can make one; a tarball extracted as root can hold one);
    False where this machine does not allow it."""
    replace(path)
    try:
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))
    except OSError:
        return False
    return True


def huge(path: Path, size: int = 1 << 40) -> None:
    """A sparse regular file of `size` bytes (a terabyte of zeros that takes no disk)."""
    replace(path)
    with open(path, "wb") as file:
        file.truncate(size)


def replace(path: Path) -> None:
    """Removes what is at `path`, whatever it is (not following links)."""
    path = Path(path)
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()


class Hung(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    """Raises Hung in the block after `seconds` (SIGALRM: it interrupts a blocking open() or read())."""
    def ring(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def python_path(*directories) -> dict:
    """The environment of a subprocess that imports this checkout, and the hostile target from `directories`
    (so that only sparsesweep's own rule can keep it from running)."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *map(str, directories)])
    return env


PYTHON = sys.executable
