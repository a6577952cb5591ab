"""Typed async client of `shieldx.credits.v1.CreditsService`."""

from __future__ import annotations

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
