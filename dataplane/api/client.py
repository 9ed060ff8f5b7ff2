"""A small synchronous client of moord's API, for netdiag and scripts."""
from __future__ import annotations

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

    def sessions(self, full: bool = False) -> pb.SessionsReply:
        return self.call("Sessions", pb.SessionsRequest(list=full))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
