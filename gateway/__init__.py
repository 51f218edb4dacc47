"""Gateway: the data plane (client connections, upstream dialing, relay, admin API, CLI)."""
