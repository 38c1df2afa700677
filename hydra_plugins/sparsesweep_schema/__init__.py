"""Registers sparsesweep's config schema (sparsesweep.schema) in Hydra's ConfigStore: Hydra imports every
module under hydra_plugins before it composes a config, so conf/'s option files find their schemas however
the config is composed (the command line, the compose API, a launcher's job)."""
import sparsesweep.schema  # noqa: F401  (registers on import)
