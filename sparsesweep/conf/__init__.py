# The config tree as a package: an installed sparsesweep finds it as pkg://sparsesweep.conf (Hydra's layout
# for an installed application), `python -m sparsesweep` by its path.
