"""The listening socket, bound before anything is loaded.

``sdrt serve`` binds ``--host``/``--port`` itself and hands the socket to uvicorn, so that
a bad host, a port out of range or a port in use is one error line (exit 2) before the
model loads, rather than uvicorn's log and exit 3 after a load began in another thread
(whose native code then aborts the process as it exits). The Ray path binds the same way
and closes the socket again before Ray's proxy takes the port.

No fastapi or uvicorn here: this module is cheap to import.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from sdrt.errors import InputError

MAX_PORT = 65535


def check_port(port: int) -> None:
    if not 0 <= port <= MAX_PORT:
        raise InputError(f"--port: expected an integer from 0 to {MAX_PORT}, got {port}")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; InputError naming ``--host``
    or ``--port`` when that cannot be. As uvicorn binds: IPv6 where the host has a colon."""
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn: a restart may rebind a port whose old connections are in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as e:
        sock.close()
        raise InputError(
            f"--host: expected an IP address or a host name of this machine, got {host!r} "
            f"({e.strerror})"
        ) from None
    except OverflowError:  # a port out of range, should check_port have let one through
        sock.close()
        raise InputError(f"--port: expected an integer from 0 to {MAX_PORT}, got {port}") from None
    except OSError as e:
        sock.close()
        raise InputError(_bind_error(host, port, e)) from None
    sock.set_inheritable(True)
    return sock


def _bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"--port: expected a free port, got {port}: already in use on {host}"
    if error.errno == errno.EACCES:
        return f"--port: expected a port this user may bind, got {port} (ports below 1024 need privileges)"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"--host: expected an address of this machine, got {host!r}"
    return f"--host/--port: could not listen on {host}:{port}: {error.strerror or error}"


def address(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket, with the port it really has (``--port 0``)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def exposure_warning(host_address: str, api_key: str | None) -> str | None:
    """The warning for listening beyond loopback without an API key; None when there is a
    key or the address is a loopback one."""
    if api_key is not None:
        return None
    try:
        if ipaddress.ip_address(host_address.split("%")[0]).is_loopback:
            return None
    except ValueError:
        pass  # not an address: say so to be safe
    return (
        f"warning: listening on {host_address} without an API key: anyone who can reach it "
        "may generate images (set --api-key-file or SDRT_API_KEY)"
    )
