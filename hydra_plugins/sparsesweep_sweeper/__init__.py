"""Registers `hydra/sweeper=grid` (see grid.py)."""
