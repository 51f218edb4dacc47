"""Settings for every part of proxy-pool; plugins receive a ``Settings`` in ``create_plugin``."""

from config.settings import ConfigError, Settings, parse_host_port

__all__ = ["ConfigError", "Settings", "parse_host_port"]
