"""Start-up errors of the PLC servers, each naming the line-file key to fix."""

from __future__ import annotations

import errno
import socket


class PlcStartError(RuntimeError):
    """A PLC server could not start; the message names the line-file key (e.g. ``plc.opcua.port``)."""


def check_port(host: str, port: int, key: str) -> None:
    """Refuse early, with the key named, when ``host:port`` cannot be listened on (in use, no such
    address). The server binds again right after; this only turns the library's vague error into ours."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PlcStartError(f"{key}.host: cannot resolve {host!r}: {e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind(addr)
            s.listen(1)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PlcStartError(
                    f"{key}.port: cannot listen on {host}:{port}: address already in use"
                ) from None
            if e.errno == errno.EACCES:
                raise PlcStartError(
                    f"{key}.port: cannot listen on {host}:{port}: permission denied (ports below 1024 need "
                    f"privileges; use e.g. 4840 for OPC UA, 5020 for Modbus, or grant CAP_NET_BIND_SERVICE)"
                ) from None
            raise PlcStartError(f"{key}.host: cannot listen on {host}:{port}: {e}") from None
