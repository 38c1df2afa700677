"""What made the runs, for people: a run's provenance block (rundir_format.schema.Provenance) as the columns of
its row, and the lines that say what made a set of runs, and whether they mix versions or devices.

A run's `version` is the code and build that computed it: sparsesweep's version with its git commit (`+dirty`
when tracked files differed from it) and torch's; its `device` is the device's name and kind. Runs from before
provenance was recorded are `unrecorded`. Hosts and SLURM jobs are shown, never compared: one sweep runs on
many nodes.
"""
from __future__ import annotations

from collections import Counter

from rundir_format import schema

UNRECORDED = "unrecorded"
SPLITS = ("version", "device")  # the columns a table can be split by (--by)
# Provenance key -> run column (the raw values, for `runs --out` and the Python API).
COLUMNS = {"sparsesweep": "sparsesweep_version", "git_commit": "git_commit", "git_dirty": "git_dirty",
           "python": "python_version", "torch": "torch_version", "cuda": "cuda_version", "cudnn": "cudnn_version",
           "device_name": "device_name", "host": "host", "slurm_job_id": "slurm_job_id"}
SHORT_COMMIT = 7


def version(block: schema.Provenance | None) -> str:
    if block is None:
        return UNRECORDED
    code = f"sparsesweep {block.sparsesweep}"
    if block.git_commit:
        code += f" {block.git_commit[:SHORT_COMMIT]}{'+dirty' if block.git_dirty else ''}"
    return f"{code}, torch {block.torch}" if block.torch else code


def device(block: schema.Provenance | None) -> str:
    if block is None or not (block.device or block.device_name):
        return UNRECORDED
    kind = (block.device or "").split(":")[0]
    return f"{block.device_name} ({kind})" if block.device_name and kind else block.device_name or kind


def columns(block: schema.Provenance | None) -> dict:
    """A run's provenance columns: `version` and `device` (as above), then the raw values."""
    raw = block.model_dump() if block is not None else {}
    return {"version": version(block), "device": device(block),
            **{column: raw.get(key) for key, column in COLUMNS.items()}}


def made_by(rows: list[dict]) -> list[str]:
    """What made these runs (rows with `version`, `device` and `host`): one line, and a second one when they mix
    versions or devices, naming each with its number of runs. What a run did not record (a run from before
    provenance; the device of a run that failed before it trained) is left out of both, and the runs that
    recorded nothing are counted. No line when none recorded it."""
    versions, devices = (Counter(row[key] for row in rows if row[key] != UNRECORDED) for key in ("version", "device"))
    if not versions:
        return []
    hosts = Counter(row["host"] for row in rows if isinstance(row.get("host"), str))
    unrecorded = len(rows) - sum(versions.values())
    parts = [one_or_count(versions, "versions"), one_or_count(devices, "devices"), one_or_count(hosts, "hosts", "host "),
             f"{unrecorded} run{'s' if unrecorded != 1 else ''} {UNRECORDED}" if unrecorded else ""]
    lines = ["made by " + " · ".join(part for part in parts if part)]
    mixed = [(name, counter) for name, counter in (("version", versions), ("device", devices)) if len(counter) > 1]
    if mixed:
        described = " and ".join(f"{len(counter)} {name}s ({listed(counter)})" for name, counter in mixed)
        lines.append(f"mixed: these runs come from {described}: compare like with like (split a table with "
                     f"{' or '.join(f'--by {name}' for name, _ in mixed)})")
    return lines


def one_or_count(counter: Counter, plural: str, prefix: str = "") -> str:
    if not counter:
        return ""
    return prefix + next(iter(counter)) if len(counter) == 1 else f"{len(counter)} {plural}"


def listed(counter: Counter) -> str:
    return "; ".join(f"{value}: {n} run{'s' if n != 1 else ''}" for value, n in counter.most_common())
