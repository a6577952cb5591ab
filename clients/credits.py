"""Typed async client of `shieldx.credits.v1.CreditsService`."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from clients.rpc import ServerStream, ServiceClient, Unary
from shieldx.credits.v1 import credits_pb2 as pb


class CreditsClient(ServiceClient):
    """The credits ledger: one async method per RPC (keyword `timeout` and `metadata`)."""

    service = "shieldx.credits.v1.CreditsService"

    purchase = Unary("Purchase", pb.PurchaseRequest, pb.PurchaseResponse)
    consume = Unary("Consume", pb.ConsumeRequest, pb.ConsumeResponse)
    reserve = Unary("Reserve", pb.ReserveRequest, pb.ReserveResponse)
    commit_reservation = Unary("CommitReservation", pb.CommitReservationRequest, pb.CommitReservationResponse)
    cancel_reservation = Unary("CancelReservation", pb.CancelReservationRequest, pb.CancelReservationResponse)
    transfer = Unary("Transfer", pb.TransferRequest, pb.TransferResponse)
    get_balance = Unary("GetBalance", pb.GetBalanceRequest, pb.GetBalanceResponse)
    list_transactions = Unary("ListTransactions", pb.ListTransactionsRequest, pb.ListTransactionsResponse)
    list_reservations = Unary("ListReservations", pb.ListReservationsRequest, pb.ListReservationsResponse)
    set_threshold = Unary("SetThreshold", pb.SetThresholdRequest, pb.SetThresholdResponse)
    watch_alerts = ServerStream("WatchAlerts", pb.WatchAlertsRequest, pb.WatchAlertsResponse)
    get_usage_report = Unary("GetUsageReport", pb.GetUsageReportRequest, pb.GetUsageReportResponse)
    verify_audit_chain = Unary("VerifyAuditChain", pb.VerifyAuditChainRequest, pb.VerifyAuditChainResponse)
    get_audit_head = Unary("GetAuditHead", pb.GetAuditHeadRequest, pb.GetAuditHeadResponse)

    def _callable(self, kind: str, name: str, response: type[Message]) -> Any:
        # `ServiceClient._callable` serializes with the unbound `Message.SerializeToString`, which
        # the upb runtime leaves unimplemented; serialize through each request's own method.
        found = self._callables.get(name)
        if found is None:
            factory = self.channel.unary_unary if kind == "unary" else self.channel.unary_stream
            found = self._callables[name] = factory(
                f"/{self.service}/{name}",
                request_serializer=_serialize,
                response_deserializer=response.FromString,
            )
        return found


def _serialize(request: Message) -> bytes:
    return request.SerializeToString()
