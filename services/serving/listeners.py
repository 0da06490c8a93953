"""One listening socket per worker process, all on the server's port (SO_REUSEPORT).

uvicorn's workers share the one socket their parent binds, and the worker that is awake when a
burst of connections arrives accepts all of it: a client holding a few keep-alive connections (a
load balancer's, or wrk's in `make bench`) often lands them all on one worker, which then runs
flat out on one CPU while the other idles (measured: 8.7k vs 12-13.7k req/s on the numeric model,
2 workers, from run to run). With SO_REUSEPORT each worker has its own accept queue and the kernel
spreads new connections over the queues by their address hash, whoever is awake.

The parent must not hold one of the sockets (connections hashed to it would never be accepted), so
what it hands uvicorn's supervisor is a `Listener`: a recipe the supervisor pickles into each
worker it starts, which binds the worker's own socket when it is unpickled there.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import cast

from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("serving")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """This worker's socket on the shared port; exits as a failed start when the port is taken."""
    sock = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    return sock


class Listener:
    """Pickled into each worker by uvicorn's supervisor; unpickled there as the worker's own socket."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return bind_reuse_port, (self.host, self.port)


def per_worker_listeners(host: str, port: int) -> list[socket.socket]:
    """What to give `uvicorn.supervisors.Multiprocess` as its sockets.

    Checks first, from the parent, that nothing else listens on the port: a socket of another
    process without SO_REUSEPORT makes the workers fail to start (which stops the server), but
    one with it (a stale server of ours) would silently take part of the connections."""
    probe = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        sys.exit(f"serving: cannot listen on {host}:{port}: {exc}")
    finally:
        probe.close()
    log.info("workers listen on %s:%d, each on its own socket (SO_REUSEPORT)", host, port)
    return [cast(socket.socket, Listener(host, port))]
