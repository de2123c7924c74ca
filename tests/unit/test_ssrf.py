"""The fetcher's address filter: every non-public form is refused, IPv6
transition forms are judged by the IPv4 address they carry."""

from __future__ import annotations

import ipaddress

import pytest

from imagegate.gateway.fetch import embedded_ipv4, is_public_address

NOT_PUBLIC = {
    # IPv4 special ranges
    "this network": "0.0.0.1",
    "unspecified": "0.0.0.0",
    "private 10/8": "10.1.2.3",
    "CGNAT": "100.64.0.1",
    "loopback": "127.0.0.1",
    "loopback elsewhere in 127/8": "127.200.0.9",
    "link-local / cloud metadata": "169.254.169.254",
    "private 172.16/12": "172.16.5.4",
    "IETF protocol assignments": "192.0.0.1",
    "documentation TEST-NET-1": "192.0.2.10",
    "6to4 relay anycast": "192.88.99.1",
    "private 192.168/16": "192.168.1.1",
    "benchmarking": "198.18.0.1",
    "benchmarking upper half": "198.19.255.254",
    "documentation TEST-NET-2": "198.51.100.7",
    "documentation TEST-NET-3": "203.0.113.7",
    "multicast": "224.0.0.1",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    # IPv6
    "v6 unspecified": "::",
    "v6 loopback": "::1",
    "v6 link-local": "fe80::1",
    "v6 link-local with scope": "fe80::1%1",
    "site-local": "fec0::1",
    "unique local": "fd00::1",
    "unique local fc": "fc00::1",
    "v6 multicast": "ff02::1",
    "v6 documentation": "2001:db8::1",
    "v6 documentation 3fff": "3fff::1",
    "local-use NAT64": "64:ff9b:1::a00:1",
    "discard-only": "100::1",
    # transition forms carrying a non-public IPv4
    "IPv4-mapped loopback": "::ffff:127.0.0.1",
    "IPv4-mapped metadata": "::ffff:169.254.169.254",
    "IPv4-compatible loopback": "::7f00:1",
    "IPv4-compatible private": "::10.0.0.1",
    "NAT64 loopback": "64:ff9b::7f00:1",
    "NAT64 private": "64:ff9b::192.168.0.1",
    "6to4 loopback": "2002:7f00:1::1",
    "6to4 private": "2002:a00:1::",
    "Teredo with a private client": "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # client 10.0.0.1
    "Teredo with documentation client": "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # client 192.0.2.45
}

PUBLIC = {
    "v4": "8.8.8.8",
    "v4 next to CGNAT": "100.128.0.1",
    "v4 next to benchmarking": "198.20.0.1",
    "v6": "2606:4700:4700::1111",
    "IPv4-mapped public": "::ffff:8.8.8.8",
    "IPv4-compatible public": "::8.8.8.8",
    "NAT64 public": "64:ff9b::8.8.8.8",
    "6to4 public": "2002:808:808::1",
    "Teredo with public server and client": "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # client 8.8.8.8
}


@pytest.mark.parametrize("address", NOT_PUBLIC.values(), ids=NOT_PUBLIC.keys())
def test_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC.values(), ids=PUBLIC.keys())
def test_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address,embedded",
    [
        ("::ffff:127.0.0.1", ["127.0.0.1"]),
        ("::7f00:1", ["127.0.0.1"]),
        ("64:ff9b::a00:1", ["10.0.0.1"]),
        ("2002:c0a8:101::1", ["192.168.1.1"]),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", ["65.54.227.120", "10.0.0.1"]),
        ("::1", []),
        ("::", []),
        ("2606:4700::1", []),
    ],
)
def test_embedded_ipv4(address: str, embedded: list[str]) -> None:
    assert [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(address))] == embedded
