"""A TCP proxy on loopback that a test can cut, to partition a client from a server.

    with TcpProxy(listen_port, target_port) as proxy:   # 127.0.0.1:listen -> 127.0.0.1:target
        ...                     # bytes flow both ways
        proxy.cut()             # a network partition: nothing gets through, nothing closes
        proxy.restore()         # the partition heals
        proxy.cut("reset")      # every connection reset, new ones reset on arrival

Two cut modes:

- ``"blackhole"`` (the default) is what a partition looks like from both ends: open
  connections stay open but go silent (bytes are held, not lost, so a connection that
  survives the cut carries on intact after `restore()`), and new connections are accepted
  but never reach the target. Clients see timeouts, never a refusal or a reset.
- ``"reset"`` resets every open connection (RST) and every new one on arrival, as a
  crashed or firewalled peer would: clients see errors at once.

Each connection is served by two daemon threads (one per direction); every blocking call
has a short timeout so that `cut`, `restore` and `close` take effect within a fraction of a
second. Counters (`bytes_to_target`, `bytes_to_client`, `connections_accepted`,
`open_connections`) let tests see what went through.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CutMode = Literal["blackhole", "reset"]
_State = Literal["open", "blackhole", "reset"]

_TICK_S = 0.1  # how long a blocking call waits before looking at the proxy's state again
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 5.0
_JOIN_TIMEOUT_S = 5.0


class TcpProxyError(RuntimeError):
    """The proxy could not start (its port is taken) or was used after close()."""


class TcpProxy:
    """Forwards every connection to ``127.0.0.1:listen_port`` to ``127.0.0.1:target_port``.

    `listen_port` 0 picks a free port (read it back from `listen_port` once started).
    `start()` binds (the context manager starts on entry and closes on exit); `close()`
    resets every connection and stops every thread.
    """

    def __init__(self, listen_port: int, target_port: int, *, host: str = LOOPBACK) -> None:
        self._host = host
        self._requested_port = listen_port
        self._target_port = target_port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._state: _State = "open"
        self._closed = False
        self._cond = threading.Condition()
        self._connections: set[_Connection] = set()
        self._bytes_to_target = 0
        self._bytes_to_client = 0
        self._accepted = 0

    # -- what tests read ------------------------------------------------------

    @property
    def listen_port(self) -> int:
        if self._listener is None:
            raise TcpProxyError("the proxy has not been started")
        return int(self._listener.getsockname()[1])

    @property
    def target_port(self) -> int:
        return self._target_port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, where clients connect."""
        return f"{self._host}:{self.listen_port}"

    @property
    def is_cut(self) -> bool:
        return self._state != "open"

    @property
    def bytes_to_target(self) -> int:
        """Bytes forwarded from clients to the target."""
        with self._cond:
            return self._bytes_to_target

    @property
    def bytes_to_client(self) -> int:
        """Bytes forwarded from the target back to clients."""
        with self._cond:
            return self._bytes_to_client

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start, cut or not."""
        with self._cond:
            return self._accepted

    @property
    def open_connections(self) -> int:
        """Client connections currently open (held silent by a blackhole ones included)."""
        with self._cond:
            return len(self._connections)

    # -- control --------------------------------------------------------------

    def start(self) -> TcpProxy:
        if self._closed:
            raise TcpProxyError("the proxy was closed")
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._host, self._requested_port))
        except OSError as e:
            listener.close()
            raise TcpProxyError(f"cannot listen on {self._host}:{self._requested_port}: {e}") from e
        listener.listen(64)
        listener.settimeout(_TICK_S)
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener,),
            name=f"tcp-proxy-accept-{self.listen_port}",
            daemon=True,
        )
        self._accept_thread.start()
        logger.info("TCP proxy %s -> %s:%d", self.address, self._host, self._target_port)
        return self

    def cut(self, mode: CutMode = "blackhole") -> None:
        """Partition clients from the target (see the module docstring for the two modes).

        When it returns, no byte a peer sends afterwards is forwarded; with ``"reset"``,
        every open connection has been reset.
        """
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"cut mode must be 'blackhole' or 'reset', not {mode!r}")
        with self._cond:
            self._state = mode
            doomed = list(self._connections) if mode == "reset" else []
            for connection in doomed:
                connection.doomed = True
            self._cond.notify_all()
        for connection in doomed:
            connection.join(_JOIN_TIMEOUT_S)
        logger.info("TCP proxy %s cut (%s)", self.address, mode)

    def restore(self) -> None:
        """Let bytes through again: held connections resume, new ones reach the target."""
        with self._cond:
            self._state = "open"
            self._cond.notify_all()
        logger.info("TCP proxy %s restored", self.address)

    def close(self) -> None:
        """Reset every connection and stop every thread. Safe to call more than once."""
        with self._cond:
            self._closed = True
            connections = list(self._connections)
            for connection in connections:
                connection.doomed = True
            self._cond.notify_all()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT_S)
        for connection in connections:
            connection.join(_JOIN_TIMEOUT_S)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed:
                    return
                raise
            with self._cond:
                self._accepted += 1
                if self._state == "reset" or self._closed:
                    _reset(client)
                    continue
                connection = _Connection(self, client)
                self._connections.add(connection)
            connection.start()

    def _wait_open(self, connection: _Connection) -> bool:
        """Block while the proxy is blackholed; False once `connection` must end."""
        with self._cond:
            while self._state == "blackhole" and not connection.doomed:
                self._cond.wait(_TICK_S)
            return not connection.doomed and self._state == "open"

    def _forwarded(self, to_target: bool, count: int) -> None:
        with self._cond:
            if to_target:
                self._bytes_to_target += count
            else:
                self._bytes_to_client += count

    def _forget(self, connection: _Connection) -> None:
        with self._cond:
            self._connections.discard(connection)


class _Connection:
    """One client connection and, once the proxy lets it through, its target connection."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.target: socket.socket | None = None
        self.doomed = False  # set by the proxy: reset both sides and end
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._ended = 0  # directions that have ended

    def start(self) -> None:
        self.client.settimeout(_TICK_S)
        thread = threading.Thread(target=self._open_and_pump, daemon=True, name="tcp-proxy-up")
        self._threads.append(thread)
        thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for this connection's threads (the second one may start while we wait)."""
        deadline = time.monotonic() + timeout_s
        joined: set[threading.Thread] = set()
        while time.monotonic() < deadline:
            waiting = [t for t in self._threads if t not in joined]
            if not waiting:
                return
            for thread in waiting:
                thread.join(max(0.0, deadline - time.monotonic()))
                if not thread.is_alive():
                    joined.add(thread)

    def _open_and_pump(self) -> None:
        if not self.proxy._wait_open(self):
            self._end(both=True)
            return
        try:
            target = socket.create_connection(
                (self.proxy._host, self.proxy.target_port), timeout=_CONNECT_TIMEOUT_S
            )
        except OSError as e:
            logger.debug("TCP proxy cannot reach its target: %r", e)
            self.doomed = True
            self._end(both=True)
            return
        target.settimeout(_TICK_S)
        self.target = target
        down = threading.Thread(
            target=self._pump, args=(target, self.client, False), daemon=True, name="tcp-proxy-down"
        )
        self._threads.append(down)
        down.start()
        self._pump(self.client, target, True)

    def _pump(self, source: socket.socket, sink: socket.socket, to_target: bool) -> None:
        """Copy `source` to `sink` until EOF, an error, or the proxy ends the connection."""
        try:
            while self.proxy._wait_open(self):
                try:
                    data = source.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:  # EOF: pass the half-close on, let the other direction finish
                    sink.shutdown(socket.SHUT_WR)
                    return
                if not self._send(sink, data):
                    return
                self.proxy._forwarded(to_target, len(data))
        except OSError as e:
            logger.debug("TCP proxy connection failed: %r", e)
            self.doomed = True
        finally:
            self._end()

    def _send(self, sink: socket.socket, data: bytes) -> bool:
        """Send all of `data`, holding it while blackholed; False if the connection ends."""
        view = memoryview(data)
        while view:
            if not self.proxy._wait_open(self):
                return False
            try:
                sent = sink.send(view)
            except TimeoutError:
                continue
            view = view[sent:]
        return True

    def _end(self, *, both: bool = False) -> None:
        with self._lock:
            self._ended += 2 if both else 1
            last = self._ended >= 2
        if not last:
            return
        for sock in (self.client, self.target):
            if sock is None:
                continue
            if self.doomed:
                _reset(sock)
            else:
                sock.close()
        self.proxy._forget(self)


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, zero timeout)."""
    with contextlib.suppress(OSError):  # already reset by the peer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
