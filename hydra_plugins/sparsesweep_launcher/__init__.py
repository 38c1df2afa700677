"""Hydra discovers launcher plugins only in the `hydra_plugins` namespace package: this one registers
`hydra/launcher=local` (see pool.py)."""
