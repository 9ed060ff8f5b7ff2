"""The lab's own UDP traffic: senders, receivers, an echo server and request/response clients that
count what they send and what arrives, so each loss case measures its loss itself (sent vs
received), independently of what netdiag says.

A standalone script (standard library only: it starts in every namespace in ~20 ms):

    traffic.py send --dst A --port P [--rate PPS] [--burst B] [--size N] [--count N] [--tag T]
                    [--pattern HEX --pattern-offset O --alternate] [--chunk MAX]
    traffic.py recv --port P [--bind A] [--rcvbuf N | --rcvbuf-force N]
    traffic.py echo --port P --bind A[,A...] [--allow CIDR[,CIDR...]]
    traffic.py client --dst A[,A...] --port P [--sockets M] [--rate PPS] [--rotate S]

Each prints one JSON line {"ready": true, ...} when its sockets are open, then answers every line
on stdin with one JSON line of its counters, after doing what it says: "stats" nothing more,
"reset" starts a new measuring window (client), "rebind" gives every socket a new source port
(client), "pause" stops sending but goes on counting answers (client), "quit" (or EOF) exits.
SIGTERM is the same as "quit".

Datagrams carry [tag:1][seq:4][chunk:2] then filler: the receiver counts them per tag. The tag
lets one stream hold datagrams that are dropped and datagrams that are not (the fragment case).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

HDR = struct.Struct("!BIH")  # tag, seq, chunk
SO_RCVBUFFORCE = 33


class Control:
    """Commands on stdin, read without blocking the traffic."""

    def __init__(self, sel: selectors.BaseSelector):
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False
        os.set_blocking(0, False)
        sel.register(0, selectors.EVENT_READ, "stdin")

    def read(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode().strip() for d in done if d.strip()]


def out(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


_stop = False


def _term(*_):
    global _stop
    _stop = True


def payload(tag: int, seq: int, size: int, chunk: int = 0) -> bytearray:
    b = bytearray(max(size, HDR.size))
    HDR.pack_into(b, 0, tag, seq & 0xFFFFFFFF, chunk)
    return b


# ---------------------------------------------------------------------------------------------


def send(a) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.sport:
        s.bind(("0.0.0.0", a.sport))
    sel = selectors.DefaultSelector()
    ctl = Control(sel)
    pattern = bytes.fromhex(a.pattern.lower().removeprefix("0x")) if a.pattern else b""
    sent: dict[int, int] = {}
    errors = 0
    seq = 0
    period = a.burst / a.rate if a.rate > 0 else 0.0
    nxt = time.monotonic()
    out({"ready": True, "sport": s.getsockname()[1]})

    def stats() -> dict:
        return {"sent": sum(sent.values()), "by_tag": {str(k): v for k, v in sent.items()}, "errors": errors,
                "done": bool(a.count and seq >= a.count)}

    while not _stop:
        for line in ctl.lines:
            out(stats())
            if line == "quit":
                return
        ctl.lines.clear()
        if ctl.eof:
            break
        if a.count and seq >= a.count:
            wait = 0.5
        else:
            wait = max(0.0, nxt - time.monotonic())
        for key, _ in sel.select(wait):
            ctl.read()
        if (a.count and seq >= a.count) or time.monotonic() < nxt:
            continue
        for _ in range(a.burst):
            if a.count and seq >= a.count:
                break
            tag = a.tag if not a.alternate else (1 if seq % 2 == 0 else 2)
            msg = payload(tag, seq, a.size)
            if pattern and tag == 1:
                msg[a.pattern_offset:a.pattern_offset + len(pattern)] = pattern
            pieces = [msg] if not a.chunk else [
                bytes(HDR.pack(tag, seq & 0xFFFFFFFF, i)) + msg[HDR.size + off:HDR.size + off + a.chunk - HDR.size]
                for i, off in enumerate(range(0, len(msg) - HDR.size, a.chunk - HDR.size))]
            for p in pieces:
                try:
                    s.sendto(p, (a.dst, a.port))
                except OSError:
                    errors += 1
                sent[tag] = sent.get(tag, 0) + 1
            seq += 1
        nxt = (nxt + period) if period else time.monotonic()
        if nxt < time.monotonic() - 1.0:  # fell behind (a busy machine): do not burst to catch up
            nxt = time.monotonic()
    out(stats())


def recv(a) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.rcvbuf_force:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, a.rcvbuf_force)
    elif a.rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    s.bind((a.bind, a.port))
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    ctl = Control(sel)
    sel.register(s, selectors.EVENT_READ, "sock")
    got: dict[int, int] = {}
    rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    out({"ready": True, "rcvbuf": rcvbuf, "local": f"{a.bind}:{a.port}"})

    def stats() -> dict:
        return {"received": sum(got.values()), "by_tag": {str(k): v for k, v in got.items()}, "rcvbuf": rcvbuf}

    while not _stop:
        for key, _ in sel.select(0.5):
            if key.data == "stdin":
                ctl.read()
                continue
            while True:
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    break
                tag = d[0] if d else 0
                got[tag] = got.get(tag, 0) + 1
        for line in ctl.lines:
            out(stats())
            if line == "quit":
                return
        ctl.lines.clear()
        if ctl.eof:
            break
    out(stats())


def echo(a) -> None:
    allow = [ipaddress.ip_network(c, strict=False) for c in a.allow.split(",")] if a.allow else []
    sel = selectors.DefaultSelector()
    ctl = Control(sel)
    socks = []
    for addr in a.bind.split(","):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # the server must not be the loss
        s.bind((addr, a.port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, s)
        socks.append(s)
    n = {"received": 0, "replied": 0, "refused": 0}
    refused_from: dict[str, int] = {}
    out({"ready": True})
    while not _stop:
        for key, _ in sel.select(0.5):
            if key.data == "stdin":
                ctl.read()
                continue
            s = key.data
            while True:
                try:
                    d, peer = s.recvfrom(65536)
                except BlockingIOError:
                    break
                n["received"] += 1
                if allow and not any(ipaddress.ip_address(peer[0]) in c for c in allow):
                    # the service authorises its clients by source address (as the design notes'
                    # messaging platform does): a NAT'd source gets no answer
                    n["refused"] += 1
                    k = f"{peer[0]}:{peer[1]}"
                    refused_from[k] = refused_from.get(k, 0) + 1
                    continue
                try:
                    s.sendto(d, peer)
                    n["replied"] += 1
                except OSError:
                    pass
        for line in ctl.lines:
            out(dict(n, refused_from=dict(sorted(refused_from.items(), key=lambda kv: -kv[1])[:5])))
            if line == "quit":
                return
        ctl.lines.clear()
        if ctl.eof:
            break
    out(n)


def client(a) -> None:
    """Request/response flows over `sockets` sockets (each its own source port, so its own
    session), round robin over the sockets and the destinations; a request counts as answered
    when its echo comes back on the socket that sent it."""
    dsts = a.dst.split(",")
    sel = selectors.DefaultSelector()
    ctl = Control(sel)
    socks: list[socket.socket] = []

    def open_socks() -> None:
        for s in socks:
            sel.unregister(s)
            s.close()
        socks.clear()
        for i in range(a.sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", 0))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            socks.append(s)

    open_socks()
    seq = 0
    window_seq = 0
    sent = replied = 0
    per: dict[int, list[int]] = {}  # sport -> [sent, replied] in this window
    period = a.burst / a.rate
    nxt = time.monotonic()
    rotated = time.monotonic()
    paused = False
    out({"ready": True, "ports": [s.getsockname()[1] for s in socks]})

    def stats() -> dict:
        silent = sum(1 for v in per.values() if v[0] >= 3 and v[1] == 0)
        return {"sent": sent, "replied": replied, "ports": [s.getsockname()[1] for s in socks],
                "flows": len(per), "flows_unanswered": silent,
                "per_port": {str(k): v for k, v in list(per.items())[:8]} if len(per) <= 8 else {}}

    while not _stop:
        for key, _ in sel.select(max(0.0, nxt - time.monotonic())):
            if key.data == "stdin":
                ctl.read()
                continue
            s = key.fileobj
            while True:
                try:
                    d = s.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(d) >= HDR.size:
                    _, rseq, _ = HDR.unpack_from(d)
                    if rseq >= window_seq:
                        replied += 1
                        port = s.getsockname()[1]
                        per.setdefault(port, [0, 0])[1] += 1
        for line in ctl.lines:
            if line == "reset":
                window_seq, sent, replied = seq, 0, 0
                per.clear()
                paused = False
            elif line == "rebind":
                open_socks()
            elif line == "pause":  # stop sending, go on receiving (the answers still in flight)
                paused = True
            out(stats())
            if line == "quit":
                return
        ctl.lines.clear()
        if ctl.eof:
            break
        now = time.monotonic()
        if a.rotate and now - rotated >= a.rotate:
            open_socks()
            rotated = now
        if now < nxt or paused:
            if paused:
                nxt = now + 0.1
            continue
        for _ in range(a.burst):
            i = seq % len(socks)
            s = socks[i]
            dst = dsts[i % len(dsts)]  # each socket talks to one peer: one session per socket
            try:
                s.sendto(bytes(payload(3, seq, a.size)), (dst, a.port))
            except OSError:
                pass
            sent += 1
            port = s.getsockname()[1]
            per.setdefault(port, [0, 0])[0] += 1
            seq += 1
        nxt += period
        if nxt < time.monotonic() - 1.0:
            nxt = time.monotonic()
    out(stats())


def main() -> None:
    ap = argparse.ArgumentParser(prog="traffic.py")
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("send")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--rate", type=float, default=200.0, help="datagrams per second (0: as fast as possible)")
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: until quit)")
    p.add_argument("--tag", type=int, default=1)
    p.add_argument("--alternate", action="store_true", help="tag 1 and 2 alternately; only tag 1 gets the pattern")
    p.add_argument("--pattern", default="")
    p.add_argument("--pattern-offset", type=int, default=0)
    p.add_argument("--chunk", type=int, default=0, help="split every datagram into datagrams of at most this size")
    p = sub.add_parser("recv")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--rcvbuf", type=int, default=0)
    p.add_argument("--rcvbuf-force", type=int, default=0)
    p = sub.add_parser("echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--allow", default="")
    p = sub.add_parser("client")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sockets", type=int, default=1)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rotate", type=float, default=0.0, help="new sockets (new source ports) every S seconds")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    {"send": send, "recv": recv, "echo": echo, "client": client}[a.mode](a)


if __name__ == "__main__":
    main()
