"""The test TCP proxy with plain sockets on loopback: forwarding, both cuts, restore, close."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import TcpProxy, TcpProxyError

SILENCE_S = 0.5  # how long "nothing arrives" is watched for


class EchoServer:
    """Sends every byte back on the connection it came from; counts connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(0, echo.port) as started:
        yield started


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5)
    sock.settimeout(5)
    return sock


def receive(sock: socket.socket, count: int) -> bytes:
    """Exactly `count` bytes (fails on EOF, or after the socket's timeout)."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return data


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives (no byte, no EOF, no reset) for a while."""
    sock.settimeout(SILENCE_S)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)


def test_bytes_flow_both_ways_on_several_connections(proxy: TcpProxy, echo: EchoServer) -> None:
    payloads = [bytes([n]) * (200_000 + n) for n in range(3)]  # several chunks each
    clients = [connect(proxy) for _ in payloads]
    for client, payload in zip(clients, payloads, strict=True):
        client.sendall(payload)
    for client, payload in zip(clients, payloads, strict=True):
        assert receive(client, len(payload)) == payload
    total = sum(map(len, payloads))
    # The proxy counts a chunk after forwarding it: the client can have it a moment before.
    deadline = time.monotonic() + 5
    while (proxy.bytes_to_target, proxy.bytes_to_client) != (total, total):
        assert time.monotonic() < deadline, (proxy.bytes_to_target, proxy.bytes_to_client, total)
        time.sleep(0.01)
    assert proxy.connections_accepted == echo.accepted == 3
    for client in clients:
        client.close()


def test_a_half_close_is_passed_on(proxy: TcpProxy) -> None:
    with connect(proxy) as client:
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        assert receive(client, 10) == b"last words"
        assert client.recv(1) == b""  # the server saw EOF, finished, and closed


def test_a_blackhole_holds_open_connections_and_restore_delivers_everything(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as client:
        client.sendall(b"before")
        assert receive(client, 6) == b"before"

        proxy.cut()
        client.sendall(b"during")
        assert_silent(client)
        assert proxy.bytes_to_target == 6
        assert proxy.open_connections == 1

        proxy.restore()
        assert receive(client, 6) == b"during"  # held, not lost
        client.sendall(b"after")
        assert receive(client, 5) == b"after"


def test_a_blackhole_accepts_new_connections_but_never_reaches_the_target(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    proxy.cut("blackhole")
    with connect(proxy) as client:  # no refusal: the client cannot tell
        client.sendall(b"hello?")
        assert_silent(client)
        assert echo.accepted == 0
        assert proxy.connections_accepted == 1

        proxy.restore()
        assert receive(client, 6) == b"hello?"
    assert echo.accepted == 1


def test_a_reset_cut_resets_open_and_new_connections_until_restored(proxy: TcpProxy) -> None:
    with connect(proxy) as client:
        client.sendall(b"x")
        assert receive(client, 1) == b"x"

        proxy.cut("reset")
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        assert proxy.open_connections == 0

    # Reset while connecting or at the first read: on loopback the reset can beat connect().
    with pytest.raises(ConnectionResetError), connect(proxy) as refused:
        refused.recv(1)

    proxy.restore()
    with connect(proxy) as client:
        client.sendall(b"again")
        assert receive(client, 5) == b"again"


def test_close_resets_connections_stops_threads_and_frees_the_port(echo: EchoServer) -> None:
    proxy = TcpProxy(0, echo.port).start()
    port = proxy.listen_port
    client = connect(proxy)
    client.sendall(b"ping")
    assert receive(client, 4) == b"ping"
    proxy.cut()  # a held connection must not keep close() waiting

    proxy.close()

    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tcp-proxy")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    proxy.close()
    with pytest.raises(TcpProxyError):
        proxy.start()


def test_a_taken_port_or_an_unknown_mode_is_an_error(proxy: TcpProxy, echo: EchoServer) -> None:
    with pytest.raises(TcpProxyError, match="cannot listen"):
        TcpProxy(echo.port, proxy.listen_port).start()
    with pytest.raises(ValueError, match="cut mode"):
        proxy.cut("drop")  # type: ignore[arg-type]
