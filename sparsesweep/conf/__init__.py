"""The config tree (Hydra config groups), shipped as package data: `@hydra.main` finds it from the package."""
