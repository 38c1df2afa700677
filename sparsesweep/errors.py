class ConfigError(ValueError):
    """A bad setting or missing input. Its message is one line that names the fix; the entry point
    prints it without a traceback."""


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format: a refusal's line too
