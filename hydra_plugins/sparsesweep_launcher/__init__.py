"""Hydra discovers launcher plugins only in the `hydra_plugins` namespace package: this one registers
`hydra/launcher=local` and `hydra/launcher=slurm` (config.py; the launchers themselves are in launchers.py)."""
