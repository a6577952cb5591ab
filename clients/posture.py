"""Typed client of the standard posture service every server serves (`shieldx.mesh.v1.PostureService`)."""

from __future__ import annotations

from clients.rpc import ServiceClient, Unary
from shieldx.mesh.v1 import posture_pb2 as pb


class PostureClient(ServiceClient):
    """One async method per RPC of PostureService."""

    service = "shieldx.mesh.v1.PostureService"

    get_posture = Unary("GetPosture", pb.GetPostureRequest, pb.GetPostureResponse)
