"""Plugins that ship with proxy-pool; each module exposes create_plugin(settings)."""
