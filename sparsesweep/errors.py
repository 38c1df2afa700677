class ConfigError(ValueError):
    """A bad setting or missing input. Its message is one line that names the fix; the entry point
    prints it without a traceback. key: the key whose value the line begins with (KEY=VALUE: ...), where
    there is one, so that the line can show the value as the user wrote it."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format: a refusal's line too
