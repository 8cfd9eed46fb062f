"""Fail loudly when a test opens a connection anywhere but this machine's loopback."""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkAccessError(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_address(family: int, address) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets, socketpairs: local by construction
    host = address[0] if isinstance(address, tuple) else str(address)
    if not is_loopback(str(host)):
        raise NetworkAccessError(
            f"test tried to reach {address!r}: tests may only connect to loopback (127.0.0.0/8, ::1)"
        )


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    check_address(self.family, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    check_address(self.family, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else (host or "")
    if not is_loopback(name):
        raise NetworkAccessError(f"test tried to resolve {name!r}: tests may only use loopback")
    return _real_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
