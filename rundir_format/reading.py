"""Reading a file of a run or sweep directory, which anyone may have made (a colleague's tarball, a cluster's
scratch space): never waiting, never unbounded, regular files only. Every reader of run files opens them here:
the collector and `status`, the sweeper and the launchers, inspect, prune, and the trainer resuming a run.

- The path is looked at first (lstat): anything but a regular file (a FIFO, a socket, a device, a directory,
  a symbolic link) is refused without being opened, so no FIFO is waited on and no device is opened.
- It is then opened with O_NONBLOCK | O_NOFOLLOW (a link or FIFO swapped in meanwhile is neither followed nor
  waited on) and checked again on the opened descriptor (fstat: a regular file, within its size cap).
- Each kind of file has a size cap (LIMITS), checked before anything is read and again while reading (a file
  that grows), and for an .npz archive on the size of the arrays it unpacks to.
- A file the user names on the command line (a checkpoint given to inspect) may be a link: follow=True.

A file that is not there reads as None (or FileNotFoundError from `opened`); anything else that cannot be read
is `Unreadable(path, why)`, `why` a few words for people ("a FIFO, not a regular file").
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from rundir_format import (BN_HISTORY, CHECKPOINT, FEATURES, HYDRA_OVERRIDES, IDENTITY, LOCK, LOG, METRICS, MULTIRUN,
                           PREVIOUS_CHECKPOINT, PROGRESS, PRUNE, RESULTS, SUBMISSIONS, SWEEP_PLAN)

MiB, GiB = 1 << 20, 1 << 30
# The most a file of each kind may hold. Far above what the trainer writes (a results.json is kilobytes, a
# sweep_plan.json of 100k runs some 20 MiB, the checkpoint of a ViT-H with Adam's state about 8 GiB), far below
# what would exhaust a machine's memory when read whole; npz: the arrays it unpacks to.
LIMITS = {"json": 64 * MiB, "yaml": 64 * MiB, "jsonl": 256 * MiB, "csv": 256 * MiB, "log": 64 * MiB,
          "lock": 4096, "npz": 1 * GiB, "checkpoint": 32 * GiB}
KINDS = {RESULTS: "json", IDENTITY: "json", PROGRESS: "json", PRUNE: "json", SWEEP_PLAN: "json", SUBMISSIONS: "json",
         MULTIRUN: "yaml", HYDRA_OVERRIDES.name: "yaml", METRICS: "jsonl", LOG: "log", LOCK: "lock",
         BN_HISTORY: "npz", FEATURES: "npz", CHECKPOINT: "checkpoint", PREVIOUS_CHECKPOINT: "checkpoint"}
FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISLNK, "a symbolic link"))


class Unreadable(ValueError):
    """A run file that exists but cannot be read (not a regular file, too large, no permission) or does not
    match its schema: `problem` says why, for people."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = as_path(path), problem


def as_path(path) -> Path:
    """`path` as a Path (one already is not parsed again: the collector reads tens of thousands of files)."""
    return path if isinstance(path, Path) else Path(path)


def kind_of(path: Path) -> str:
    """The kind of a run file, by its name (a name no run file has: the strictest cap, json's)."""
    return KINDS.get(os.path.basename(path), "json")


def file_type(mode: int) -> str:
    return next((name for test, name in FILE_TYPES if test(mode)), "not a regular file")


def check(path: Path, info: os.stat_result, kind: str | None) -> None:
    """Unreadable unless `info` is a regular file's within the cap of `kind` (None: any size)."""
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable(path, f"{file_type(info.st_mode)}, not a regular file: not read")
    if kind is not None and info.st_size > LIMITS[kind]:
        raise Unreadable(path, f"{info.st_size} bytes, more than a {kind} file of a run holds ({LIMITS[kind]}): "
                               "not read")


@contextlib.contextmanager
def opened(path: Path, kind: str | None = None, *, follow: bool = False, capped: bool = True):
    """The regular file `path` open for reading (binary), checked as the module says. FileNotFoundError (or
    NotADirectoryError) when there is nothing at `path`; Unreadable for anything that cannot be read.
    capped=False: any size (for a reader that reads a bounded part of it, as read_tail)."""
    path = as_path(path)
    where = str(path)  # once: tens of thousands of files are opened by one command
    kind = (kind or kind_of(where)) if capped else None
    try:
        check(path, (os.stat if follow else os.lstat)(where), kind)
        descriptor = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                             | (0 if follow else os.O_NOFOLLOW))
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as error:  # no permission; ELOOP: a link swapped in after lstat
        why = "a symbolic link, not a regular file: not read" if error.errno == errno.ELOOP else \
            error.strerror or type(error).__name__
        raise Unreadable(path, why) from None
    try:
        check(path, os.fstat(descriptor), kind)
        file = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        yield file


def read_bytes(path: Path, kind: str | None = None, *, follow: bool = False) -> bytes | None:
    """The whole content of the run file `path` (within its kind's cap); None when there is no such file."""
    kind = kind or kind_of(path)
    try:
        with opened(path, kind, follow=follow) as file:
            size = os.fstat(file.fileno()).st_size  # within the cap: opened checked it
            content = file.read(size + 1)  # (asking for the cap itself would allocate it)
            if len(content) > size:  # it grew since it was opened: read on, to just past the cap
                content += file.read(LIMITS[kind] + 1 - len(content))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # an I/O error while reading
        raise Unreadable(path, error.strerror or type(error).__name__) from None
    if len(content) > LIMITS[kind]:  # it grew since it was opened
        raise Unreadable(path, f"more than a {kind} file of a run holds ({LIMITS[kind]} bytes): not read")
    return content


def read_tail(path: Path, size: int) -> bytes | None:
    """The last `size` bytes (at most) of a log; None when there is no such file."""
    try:
        with opened(path, "log", capped=False) as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - size))
            return file.read(size)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise Unreadable(path, error.strerror or type(error).__name__) from None


def archive_names(path: Path) -> list[str] | None:
    """The names of the arrays in an .npz archive (its index only); None when there is no such file."""
    import zipfile

    try:
        with opened(path, "npz") as file, zipfile.ZipFile(file) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Unreadable:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise Unreadable(path, f"not an .npz archive ({type(error).__name__})") from None


def read_arrays(path: Path, keys=None) -> dict | None:
    """The arrays `keys` (all when None) of an .npz archive, loaded (never pickled objects); None when there is
    no such file. Unreadable when the archive is damaged, lacks a key, or its arrays unpack (or say they do)
    to more than its cap."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with opened(path, "npz") as file, zipfile.ZipFile(file) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            keys = list(members if keys is None else keys)
            missing = [key for key in keys if key not in members]
            if missing:
                raise Unreadable(path, f"no array {missing[0]}")
            declared = 0
            for key in keys:  # each array's header says how much it holds: checked before any is loaded
                with archive.open(members[key]) as member:
                    version = np.lib.format.read_magic(member)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = header(member)
                declared += max(members[key].file_size, int(np.prod(shape, dtype=object)) * dtype.itemsize)
            if declared > LIMITS["npz"]:
                raise Unreadable(path, f"its arrays unpack to {declared} bytes, more than an .npz of a run holds "
                                       f"({LIMITS['npz']}): not read")
            arrays = {}
            for key in keys:
                with archive.open(members[key]) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Unreadable:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise Unreadable(path, f"not a readable .npz archive ({type(error).__name__})") from None
