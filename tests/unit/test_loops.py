"""Loop detection: which targets reach the gateway's own listen addresses, without DNS."""

from __future__ import annotations

import socket

import pytest

from gateway.proxy.loops import OwnAddresses, machine_addresses


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.9.9.9", "localhost", "LOCALHOST.", "localhost.localdomain", "app.localhost", "::1",
     "0.0.0.0", "ip6-localhost"],
)
def test_loopback_names_and_addresses_on_our_port_loop(host: str) -> None:
    own = OwnAddresses([("127.0.0.1", 8899)], machine=frozenset())
    assert own.loops(host, 8899)
    assert not own.loops(host, 8900)  # another port on this machine is somebody else's


def test_a_public_name_on_our_port_is_not_a_loop() -> None:
    own = OwnAddresses([("127.0.0.1", 8899)], machine=frozenset({"192.0.2.7"}))
    assert not own.loops("example.com", 8899)
    assert not own.loops("192.0.2.7", 8899)  # not listening there: not ours


def test_wildcard_listen_covers_the_machines_own_addresses_and_name() -> None:
    own = OwnAddresses([("0.0.0.0", 8899)], machine=frozenset({"192.0.2.7", "2001:db8::7", "gw-host"}))
    assert own.loops("192.0.2.7", 8899)
    assert own.loops("2001:db8::7", 8899)
    assert own.loops("GW-HOST", 8899)
    assert not own.loops("192.0.2.8", 8899)


def test_machine_addresses_reads_this_machines_interfaces() -> None:
    found = machine_addresses()
    assert "127.0.0.1" in found  # from the kernel's table of local addresses
    assert socket.gethostname().lower() in found


def test_names_from_etc_hosts_for_our_addresses_are_own_names_on_every_listen_address(tmp_path) -> None:
    """A name /etc/hosts gives a loopback or own address reaches us through an upstream on this machine:
    own for a specific listen address too; a name of another machine is not."""
    from gateway.proxy.loops import own_names

    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.1.1 Build-Box.example build-box # comment\n192.0.2.7 lan-name\n10.0.0.5 db\n# 127.0.0.1 gone\n"
    )
    names = own_names(frozenset({"192.0.2.7"}), hosts)
    assert {"build-box.example", "build-box", "lan-name", socket.gethostname().lower()} <= names
    assert "db" not in names and "gone" not in names
    own = OwnAddresses([("127.0.0.1", 8899)], machine=frozenset(), names=names)
    assert own.loops("BUILD-BOX.", 8899) and own.loops("lan-name", 8899)
    assert not own.loops("db", 8899) and not own.loops("build-box", 8900)
