"""A machine without internet, for the command tests: put this folder on PYTHONPATH and every network
connection of the process fails at once (name lookups and connects), as it does offline. Local (AF_UNIX)
sockets still work."""

import socket

_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _offline_getaddrinfo(host, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, f"offline test: no name lookup for {host!r}")


def _refuse(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(101, f"offline test: network is unreachable ({address!r})")
        return real(self, address)
    return connect


socket.getaddrinfo = _offline_getaddrinfo
socket.socket.connect = _refuse(_real_connect)
socket.socket.connect_ex = _refuse(_real_connect_ex)
