"""Is a request aimed at the gateway (or its admin API) itself?

A proxy asked to fetch its own listen address would call itself until it runs out of connections. The
check runs on every request, so it must not resolve names: it knows the names that mean "this machine"
without DNS, read once at start-up (RFC 6761 ``localhost``, the host name, and every name ``/etc/hosts``
gives a loopback or own address: an upstream on this machine resolves them to us), which are own names
for every listen address; for a wildcard listen address also the machine's own interface addresses,
read from the kernel.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

__all__ = ["OwnAddresses", "machine_addresses", "own_names"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def machine_addresses() -> frozenset[str]:
    """The addresses of this machine's interfaces (Linux /proc; empty elsewhere), and its host name."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for before, line in pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            found.add(before.strip().removeprefix("|-- ").strip())
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError, IndexError):
        pass
    try:
        name = socket.gethostname().lower()
        found.update({name, name.split(".")[0]})
    except OSError:
        pass
    return frozenset(a for a in found if a)


def own_names(machine: frozenset[str], hosts: Path = Path("/etc/hosts")) -> frozenset[str]:
    """Names that reach this machine without DNS: its host name (full and short), and the names
    ``hosts`` gives a loopback, unspecified or own (``machine``) address."""
    names: set[str] = set()
    try:
        name = socket.gethostname().lower().rstrip(".")
        names.update({name, name.split(".")[0]})
    except OSError:
        pass
    try:
        lines = hosts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        address, *aliases = line.partition("#")[0].split() or [""]
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or str(ip) in machine:
            names.update(alias.lower().rstrip(".") for alias in aliases)
    return frozenset(n for n in names if n)


def _is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


class OwnAddresses:
    """The (host, port) pairs this process listens on, and the question whether a target is one of them."""

    def __init__(
        self,
        addresses: Iterable[tuple[str, int]] = (),
        *,
        machine: frozenset[str] | None = None,
        names: frozenset[str] | None = None,
    ) -> None:
        self._own: set[tuple[str, int]] = set()
        self._machine = machine
        self._names = names  # own names, for every listen address (read at the first add)
        self.ports: frozenset[int] = frozenset()
        for host, port in addresses:
            self.add(host, port)

    def add(self, host: str, port: int) -> None:
        self._own.add((host, port))
        self.ports = frozenset(p for _, p in self._own)
        if _is_wildcard(host) and self._machine is None:
            self._machine = machine_addresses()
        if self._names is None:
            self._names = own_names(self._machine if self._machine is not None else machine_addresses())

    def loops(self, host: str, port: int) -> bool:
        """True when ``host:port`` reaches one of our listen addresses (callers on the hot path check
        ``port in ports`` first, which settles almost every request)."""
        target = host.lower().rstrip(".")
        for own_host, own_port in self._own:
            if port != own_port:
                continue
            if target == own_host.lower() or _is_loopback(target) or (self._names and target in self._names):
                return True  # a loopback or own name on one of our ports: ours, or one we must not relay to
            if _is_wildcard(own_host) and self._machine and target in self._machine:
                return True
        return False
