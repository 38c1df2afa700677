"""Directory names: a run's (one level below its sweep directory) and a sweep's default (from its command).

A run's directory is named by its overrides (Hydra's `override_dirname`, `a=1,b=2`) made into one safe name:
`%` `/`, NUL and control characters are percent-escaped (so that the mapping stays one-to-one), a leading `.`
too (never `.`, `..` or a hidden name), and a name longer than RUN_DIRNAME_MAX_BYTES has the middle of its
longest parts cut out (`…`) and ends in `~` and a hash of the whole name. Ordinary names (none of those
characters, short enough) are unchanged.

A sweep's default directory is named by its command: the experiment, then the other overrides sorted (order
on the command line does not matter), without Hydra's own settings and without the keys that never name a run's
directory (the loggers'): `+experiment=smoke optimizer=adam,sgd` -> `smoke,optimizer=adam,sgd`, no overrides ->
`default`. The same command finds the same directory, and its runs, again.

Both are OmegaConf resolvers (conf/config.yaml's `hydra:` section), registered when this module is imported,
by the sweeper and the launchers: Hydra imports those when it starts, and a launched job the launcher.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, read_write

from rundir_format.walk import is_safe_name as is_safe_dirname  # noqa: F401  (what a run directory's name must be)
from sparsesweep.hydra_compat import get_overrides_dirname

# A run directory moved aside gets `@<run_id>` and maybe `.N` appended (grid.move_aside): 255 bytes with those.
RUN_DIRNAME_MAX_BYTES = 224
HASH_CHARS = 16
KEPT_EACH_SIDE = 8  # characters kept at each end of a part cut short
ELLIPSIS = "…"
NO_OVERRIDES = "default"
EXPERIMENT = "experiment"


def _escape(character: str) -> str:
    return "".join(f"%{byte:02X}" for byte in character.encode(errors="surrogatepass"))


def _needs_escape(character: str) -> bool:
    code = ord(character)
    return character in "%/" or code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF  # surrogates: not UTF-8


def safe_dirname(name: str) -> str:
    """`name` as one directory name: escaped (one-to-one), never `.`/`..`/hidden/empty, shortened with a hash
    of the whole name when too long."""
    if not name:
        return NO_OVERRIDES
    escaped = "".join(_escape(c) if _needs_escape(c) else c for c in name)
    if escaped.startswith("."):
        escaped = _escape(".") + escaped[1:]
    if len(escaped.encode()) <= RUN_DIRNAME_MAX_BYTES:
        return escaped
    suffix = "~" + hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:HASH_CHARS]
    return _shortened(escaped, RUN_DIRNAME_MAX_BYTES - len(suffix)) + suffix


def _shortened(name: str, budget: int) -> str:
    """`name` in at most `budget` bytes, readable: the middle of its longest `,`-separated parts cut out (a long
    path keeps its ends, and the other overrides stay whole), else its end."""
    parts = name.split(",")

    def size() -> int:
        return len(",".join(parts).encode())

    while size() > budget:
        longest = max(range(len(parts)), key=lambda k: len(parts[k]))
        part = parts[longest]
        if len(part) <= 2 * KEPT_EACH_SIDE + 1:
            break
        keep = len(part) - min(len(part) - 2 * KEPT_EACH_SIDE, size() - budget + 1)  # +1: room for the ellipsis
        parts[longest] = part[:keep - keep // 2] + ELLIPSIS + part[len(part) - keep // 2:]
    return ",".join(parts).encode()[:budget].decode(errors="ignore")  # whole characters


def run_dirname(overrides, exclude_keys=(), item_sep: str = ",", kv_sep: str = "=") -> str:
    """The directory name of a run with these override lines, as hydra.sweep.subdir's default gives it
    (without composing its config: also for a run whose config does not compose)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return safe_dirname(get_overrides_dirname(parsed, exclude_keys=list(exclude_keys), item_sep=item_sep,
                                              kv_sep=kv_sep))


def command_signature(task_overrides, exclude_keys=(), item_sep: str = ",", kv_sep: str = "=") -> str:
    """A command's directory name: its experiment, then its other overrides (sorted, as a run's), without
    excluded keys."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    experiment = [o.input_line.split("=", 1)[1] for o in parsed
                  if o.get_key_element().lstrip("+~") == EXPERIMENT and "=" in o.input_line]
    others = [o for o in parsed if o.get_key_element().lstrip("+~") != EXPERIMENT]
    rest = get_overrides_dirname(others, exclude_keys=list(exclude_keys), item_sep=item_sep, kv_sep=kv_sep)
    return safe_dirname(item_sep.join(part for part in [*experiment, rest] if part))


def _signature_resolver(*, _root_) -> str:
    naming = _root_.hydra.job.config.override_dirname
    return command_signature(list(_root_.hydra.overrides.task), exclude_keys=list(naming.exclude_keys),
                             item_sep=naming.item_sep, kv_sep=naming.kv_sep)


def pin_sweep_dir(config, sweep_dir: str) -> None:
    """Sets a composed job config's sweep directory to the sweep's (its default is computed from the
    command's overrides, and a job's config holds the job's overrides instead)."""
    with read_write(config.hydra.sweep):
        config.hydra.sweep.dir = str(sweep_dir)


def is_direct_child(job_dir: Path, sweep_dir: Path) -> bool:
    return job_dir.parent == sweep_dir and is_safe_dirname(job_dir.name)


for _name, _resolver in (("sparsesweep.signature", _signature_resolver), ("sparsesweep.run_dirname", safe_dirname)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
