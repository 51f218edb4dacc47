"""Built-in checkers, one per module; ``_``-prefixed modules are shared helpers, not plugins.

Stages: 1 tcp_connect, socks_handshake; 2 http_anonymity; 3 geoip_lookup (needs the exit address),
site_reach.
"""
