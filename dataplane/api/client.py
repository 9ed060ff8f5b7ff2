"""A small synchronous client of moord's API, for netdiag and scripts."""
from __future__ import annotations

from typing import Iterator

import grpc

from . import moor_pb2 as pb
from . import moor_pb2_grpc as rpc

DEFAULT_SOCKET = "/run/moor/moord.sock"


class AgentUnavailable(RuntimeError):
    pass


class AgentClient:
    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 5.0):
        self.timeout = timeout
        # a node's full session list runs to tens of MB: the 4 MiB default would refuse it
        self.channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.max_receive_message_length", 256 << 20)])
        self.stub = rpc.AgentStub(self.channel)

    def call(self, method: str, request=None):
        try:
            return getattr(self.stub, method)(request or pb.Empty(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise AgentUnavailable(f"moord's API: {e.code().name}: {e.details()}") from e

    def health(self) -> pb.HealthReply:
        return self.call("Health")

    def ipam_pages(self, page_size: int = 0, node: str = "") -> Iterator[pb.IpamReply]:
        """The agent's Ipam replies page by page until the last (each reply's pool usage counts its
        own page: sum them). An error reply ends the walk."""
        token = ""
        while True:
            r = self.call("Ipam", pb.IpamRequest(page_size=page_size, page_token=token, node=node))
            yield r
            if r.error or not r.next_page_token:
                return
            if r.next_page_token == token:  # an agent that does not move on would loop forever
                raise AgentUnavailable(f"moord's API: Ipam returned the page token {token!r} again")
            token = r.next_page_token

    def sessions(self, full: bool = False) -> pb.SessionsReply:
        return self.call("Sessions", pb.SessionsRequest(list=full))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
