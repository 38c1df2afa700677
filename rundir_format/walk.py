"""Which directories under the given ones are run directories: one walk, one rule for links, for every reader
(the collector's commands, `status`, the report, prune).

- **Runs.** Every directory under the given ones (sweep or run directories) holding results.json (the run
  ended), identity.json (the trainer started it) or .hydra/overrides.yaml (the launcher created it).
  Directories whose name starts with a dot (.hydra, .submitit, .superseded) are never walked.
- **Links.** A symbolic link to a directory is followed only when its target lies inside one of the given
  directories (by real path), and every directory is walked once: a link to a run of the sweep, or two links
  to one directory, count it once, under the path that goes through no link when there is one. A link whose
  target is outside every given directory is not followed (`skipped`: it could lead anywhere, `/` included);
  nor is a link to a directory that holds it, or a chain of links that never ends (`skipped`: a loop). A
  dangling link, or a link to a file, leads to no directory: ignored.
- **Unreadable.** A directory that cannot be listed (no permission, an I/O error) is `unreadable`: said,
  never silently dropped, whatever runs it may hold.

Nothing here opens a file: the walk lists directories and looks at names (lstat/stat), so a FIFO or a device
in a sweep costs it nothing.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rundir_format import HYDRA_OVERRIDES, IDENTITY, RESULTS

UNREADABLE, SKIPPED = "unreadable", "skipped"


@dataclass(frozen=True)
class NotWalked:
    """A directory or link the walk did not enter: its state (UNREADABLE, SKIPPED) and why, for people."""
    path: Path
    state: str
    why: str


@dataclass
class Walk:
    runs: list[Path] = field(default_factory=list)             # sorted
    not_walked: list[NotWalked] = field(default_factory=list)  # sorted by path


def is_run_dir(directory: Path, names: set[str]) -> bool:
    return RESULTS in names or IDENTITY in names or (".hydra" in names and (directory / HYDRA_OVERRIDES).is_file())


def is_safe_name(name: str) -> bool:
    """Whether `name` names a directory directly below another (what a run directory's name must be)."""
    return (name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(name.encode(errors="surrogatepass")) <= 255)


def is_inside(real: str, top: str) -> bool:
    """Whether the real path `real` is `top` or below it (both real paths)."""
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def link_problem(link: Path, holder_real: str, tops: list[str]) -> str | None:
    """Why the link `link` (in the directory whose real path is holder_real) is not followed; None when it is
    (a directory inside one of the real paths `tops`). '' for a link that leads to no directory (ignored)."""
    try:
        mode = os.stat(link).st_mode  # what the link leads to
    except OSError as error:
        return "a chain of links that never ends (a loop): not followed" if error.errno == errno.ELOOP else ""
    if not stat.S_ISDIR(mode):
        return ""
    target = os.path.realpath(link)
    if not any(is_inside(target, top) for top in tops):
        return f"a link to {target}, outside {' and '.join(tops) if len(tops) < 3 else 'the directories given'}: " \
               "not followed"
    if is_inside(holder_real, target):
        return f"a link to {target}, which holds it (a loop): not followed"
    return None


def walk(paths) -> Walk:
    """Every run directory under `paths` (sweep or run directories), each once, and what the walk did not enter
    (see the module's docstring). FileNotFoundError for a path that is not a directory."""
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: pass a sweep directory (e.g. multirun/SWEEP)")
    tops = list(dict.fromkeys(os.path.realpath(path) for path in paths))
    visited, result, links = set(), Walk(), []

    def enter(top: Path) -> None:
        stack = [(top, os.path.realpath(top))]  # (directory, its real path)
        while stack:
            directory, real = stack.pop()
            if real in visited:
                continue
            visited.add(real)
            try:
                entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
            except FileNotFoundError:  # vanished meanwhile
                continue
            except OSError as error:
                result.not_walked.append(NotWalked(directory, UNREADABLE, f"cannot be listed "
                                                   f"({error.strerror or type(error).__name__}): any runs in it are "
                                                   "not counted"))
                continue
            if is_run_dir(directory, {entry.name for entry in entries}):
                result.runs.append(directory)
            for entry in reversed(entries):
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_symlink():
                        problem = link_problem(Path(entry.path), real, tops)
                        if problem is None:
                            links.append(Path(entry.path))  # after every plain path
                        elif problem:
                            result.not_walked.append(NotWalked(Path(entry.path), SKIPPED, problem))
                    elif entry.is_dir(follow_symlinks=False):  # no link: its real path is its holder's and name
                        stack.append((directory / entry.name, os.path.join(real, entry.name)))
                except OSError:  # vanished meanwhile
                    continue

    for path in paths:
        enter(path)
    while links:
        enter(links.pop(0))
    result.runs.sort()
    result.not_walked.sort(key=lambda entry: entry.path)
    return result
