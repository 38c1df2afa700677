"""The config tree (Hydra config groups), shipped as package data: `@hydra.main` finds it from the package
(the `sparsesweep` command as pkg://sparsesweep.conf, Hydra's layout for an installed application;
`python -m sparsesweep` by its path)."""
