"""Kernel socket options for BGP transport security: TCP MD5 signatures (RFC 2385, TCP_MD5SIG)
and GTSM (RFC 5082: send with TTL 255, accept only TTL >= 254 from a directly connected peer)."""
from __future__ import annotations

import ipaddress
import socket
import struct

TCP_MD5SIG = 14
TCP_MD5SIG_MAXKEYLEN = 80
IP_MINTTL = 21
IPV6_MINHOPCOUNT = 73


def _sockaddr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if addr.version == 4:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + addr.packed + b"\0" * 8
    else:
        raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + addr.packed + struct.pack("=I", 0)
    return raw.ljust(128, b"\0")  # struct __kernel_sockaddr_storage


def set_md5(sock: socket.socket, peer: str, password: str) -> None:
    """Sign (and require signatures on) every segment to and from `peer` with `password`."""
    key = password.encode()
    if not 0 < len(key) <= TCP_MD5SIG_MAXKEYLEN:
        raise ValueError(f"a TCP MD5 password is 1 to {TCP_MD5SIG_MAXKEYLEN} bytes")
    data = _sockaddr(ipaddress.ip_address(peer)) + struct.pack("=BBHi", 0, 0, len(key), 0) + \
        key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\0")
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, data)


def set_gtsm(sock: socket.socket, hops: int = 1) -> None:
    """Send with TTL/hop limit 255; drop anything that crossed more than `hops` - 1 routers."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, 256 - hops)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, 256 - hops)
