"""A TCP proxy that breaks connections on purpose, for the fault-injection tests.

It sits between the orchestrator and PostgreSQL (a TCP address or the Unix socket of the embedded server) and,
while armed, picks a live connection at random moments and does one of:

* ``reset``: both sides closed at once, the client's with an RST (what a crashed load balancer or a killed
  pgbouncer looks like);
* ``stall``: nothing forwarded either way for a while, then reset (a dropped NAT entry, a half-dead node);
* ``hiccup``: nothing forwarded for a while, then forwarding resumes (a congested link);
* ``freeze``: nothing forwarded ever again, both sockets left open (half-open: a dead middlebox, a hung sidecar
  proxy or a lost NAT entry; the kernel keeps ACKing, so TCP keepalives never fire);
* ``storm``: every open connection reset at once (a restarted load balancer or pgbouncer);
* ``mute_handshakes`` (set by a test, not drawn): the next N new connections freeze just before the server's
  last start-up message reaches the client (mid-handshake: the server has a ready session nobody knows of,
  the client's connect times out);
* ``storm-leak``: a storm in which the proxy forgets the server side of some connections (``LEAK_RATIO``)
  instead of closing it (a proxy whose client-side state was lost): PostgreSQL keeps those sessions, idle and
  holding their locks, until something ends them.

The server side is always closed when the client side is, so PostgreSQL sees the loss and rolls back what that
session had open, as it would with a real network failure. The proxy is deterministic for a given seed in
what it chooses, not in when: timing depends on the machine.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from psycopg import conninfo

LEAK_RATIO = 0.1
_READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery: the server's last message of a connection's start-up
KINDS = ("reset", "stall", "hiccup")
"""The default mix; ``freeze`` and ``storm`` are chosen explicitly (``kinds=("freeze",)``)."""


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    pause_until: float = 0.0
    reset_at: float | None = None
    leak: bool = False  # on reset, keep the server side open (never read, never closed until the proxy stops)
    mute: bool = False  # the server's side is never read: the client never hears back
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self, *, rst: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        if rst:  # SO_LINGER with a zero timeout: close() sends RST instead of FIN
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (self.client,) if self.leak else (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``upstream_url``'s server; inject faults while ``armed`` is set."""

    def __init__(
        self,
        upstream_url: str,
        *,
        seed: int,
        mean_interval: float = 0.1,
        max_stall: float = 2.0,
        kinds: tuple[str, ...] = KINDS,
        every: tuple[float, float] | None = None,
    ) -> None:
        """``every``: draw the time between faults uniformly from this range instead of exponentially."""
        params = conninfo.conninfo_to_dict(upstream_url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        self._upstream: tuple[int, str | tuple[str, int]] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") else (socket.AF_INET, (host, port))
        )
        self._params = params
        self._random = random.Random(seed)
        self.mean_interval, self.max_stall, self.kinds, self.every = mean_interval, max_stall, kinds, every
        self.reset_by_storms = 0
        self.armed = threading.Event()
        self.faults: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.mute_handshakes = 0
        self._pairs: list[_Pair] = []
        self._leaked: list[_Pair] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._inject, daemon=True),
        ]

    def url(self) -> str:
        """The upstream URL with the proxy as its host (same user, password and database)."""
        params = {k: v for k, v in self._params.items() if k not in ("host", "hostaddr", "port")}
        return conninfo.make_conninfo("", **params, host="127.0.0.1", port=str(self.port))

    def __enter__(self) -> FaultProxy:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close(rst=False)
        for pair in self._leaked:
            with contextlib.suppress(OSError):
                pair.server.close()

    @property
    def total(self) -> int:
        return sum(self.faults.values())

    # -- forwarding ----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            family, address = self._upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            try:
                server.connect(address)
            except OSError:  # the server is down (restarting): the client sees its connection closed
                client.close()
                server.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                if self.mute_handshakes > 0:
                    self.mute_handshakes -= 1
                    pair.mute = True
                    self.faults["mute-handshake"] += 1
                self._pairs.append(pair)
                self.connections += 1
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        ends = {pair.client: pair.server, pair.server: pair.client}
        try:
            while not pair.closed and not self._stop.is_set():
                now = time.monotonic()
                if pair.reset_at is not None and now >= pair.reset_at:
                    pair.close(rst=True)
                    break
                if now < pair.pause_until:
                    time.sleep(0.01)
                    continue
                readable, _, _ = select.select(list(ends), [], [], 0.02)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        pair.close(rst=False)
                        break
                    if pair.mute and sock is pair.server and _READY in data:  # the handshake's end: lost
                        pair.pause_until = math.inf
                        break
                    ends[sock].sendall(data)
        except OSError:
            pair.close(rst=False)
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)

    # -- faults --------------------------------------------------------------------------------------------

    def _pause(self) -> float:
        if self.every is not None:
            return self._random.uniform(*self.every)
        return self._random.expovariate(1 / self.mean_interval)

    def _inject(self) -> None:
        while not self._stop.wait(self._pause()):
            if not self.armed.is_set():
                continue
            with self._lock:
                live = [p for p in self._pairs if not p.closed and p.reset_at is None and p.pause_until != math.inf]
            if not live:
                continue
            pair = self._random.choice(live)
            kind = self._random.choice(self.kinds)
            now = time.monotonic()
            if kind in ("storm", "storm-leak"):
                for each in live:
                    each.leak = kind == "storm-leak" and self._random.random() < LEAK_RATIO
                    each.reset_at = now
                    if each.leak:
                        self._leaked.append(each)
                self.reset_by_storms += len(live)
            elif kind == "freeze":
                pair.pause_until = math.inf  # never forwarded again; closed only when the proxy stops
            elif kind == "reset":
                pair.reset_at = now
            else:
                pair.pause_until = now + self._random.uniform(0.1, self.max_stall)
                if kind == "stall":
                    pair.reset_at = pair.pause_until
            self.faults[kind] += 1
