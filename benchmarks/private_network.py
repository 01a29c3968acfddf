"""Run a command in a network namespace of its own, where only loopback exists.

    python -m sdrt.benchmarks.private_network -- sdrt serve FOLDER --replicas 2 ...

Ray (``sdrt serve --replicas N``) listens on the node's address and on ports of every
interface, whatever ``--host`` says. Inside a fresh network namespace the only interface
is ``lo``, so nothing Ray opens can be reached from, or reach, anything off this process
tree: the Ray tests and load tests run there. Linux only; needs the right to create a
network namespace (root, or CAP_SYS_ADMIN), else NamespaceUnavailable says why.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWNET = 0x40000000  # <linux/sched.h>
SIOCGIFFLAGS = 0x8913  # <linux/sockios.h>
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sh"  # struct ifreq: the interface name, then ifr_flags


class NamespaceUnavailable(RuntimeError):
    """This process may not make a network namespace (not Linux, or not permitted)."""


def enter_private_network() -> None:
    """Move this process (and all it starts from now on) into a new network namespace and
    bring its loopback interface up. Its other threads stay where they were: call it before
    starting any."""
    if not sys.platform.startswith("linux"):
        raise NamespaceUnavailable(f"network namespaces are Linux only, not {sys.platform}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NamespaceUnavailable(
            f"unshare(CLONE_NEWNET) failed: {errno.errorcode.get(code, code)} "
            f"({os.strerror(code)}); it needs root or CAP_SYS_ADMIN"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m sdrt.benchmarks.private_network -- COMMAND [ARG ...]")
        return 2
    try:
        enter_private_network()
    except NamespaceUnavailable as error:
        print(f"private_network: {error}", file=sys.stderr)
        return 2
    try:
        os.execvp(args[0], args)
    except OSError as error:
        print(f"private_network: cannot run {args[0]!r}: {error.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
