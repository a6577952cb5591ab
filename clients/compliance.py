"""Typed client of the compliance service (`shieldx.compliance.v1.ComplianceService`)."""

from __future__ import annotations

from clients.rpc import ServiceClient, Unary
from shieldx.compliance.v1 import compliance_pb2 as pb


class ComplianceClient(ServiceClient):
    """One async method per RPC of ComplianceService."""

    service = "shieldx.compliance.v1.ComplianceService"

    list_frameworks = Unary("ListFrameworks", pb.ListFrameworksRequest, pb.ListFrameworksResponse)
    list_controls = Unary("ListControls", pb.ListControlsRequest, pb.ListControlsResponse)
    get_control = Unary("GetControl", pb.GetControlRequest, pb.GetControlResponse)
    run_assessment = Unary("RunAssessment", pb.RunAssessmentRequest, pb.RunAssessmentResponse)
    get_assessment = Unary("GetAssessment", pb.GetAssessmentRequest, pb.GetAssessmentResponse)
    list_assessments = Unary("ListAssessments", pb.ListAssessmentsRequest, pb.ListAssessmentsResponse)
    list_evidence = Unary("ListEvidence", pb.ListEvidenceRequest, pb.ListEvidenceResponse)
    get_compliance_score = Unary("GetComplianceScore", pb.GetComplianceScoreRequest, pb.GetComplianceScoreResponse)
    generate_report = Unary("GenerateReport", pb.GenerateReportRequest, pb.GenerateReportResponse)
    list_alerts = Unary("ListAlerts", pb.ListAlertsRequest, pb.ListAlertsResponse)
    raise_alert = Unary("RaiseAlert", pb.RaiseAlertRequest, pb.RaiseAlertResponse)
    acknowledge_alert = Unary("AcknowledgeAlert", pb.AcknowledgeAlertRequest, pb.AcknowledgeAlertResponse)
    list_remediations = Unary("ListRemediations", pb.ListRemediationsRequest, pb.ListRemediationsResponse)
    update_remediation = Unary("UpdateRemediation", pb.UpdateRemediationRequest, pb.UpdateRemediationResponse)
    verify_evidence_chain = Unary("VerifyEvidenceChain", pb.VerifyEvidenceChainRequest, pb.VerifyEvidenceChainResponse)
    get_evidence_chain_head = Unary(
        "GetEvidenceChainHead", pb.GetEvidenceChainHeadRequest, pb.GetEvidenceChainHeadResponse
    )
    list_score_history = Unary("ListScoreHistory", pb.ListScoreHistoryRequest, pb.ListScoreHistoryResponse)
    record_breach_notification = Unary(
        "RecordBreachNotification", pb.RecordBreachNotificationRequest, pb.RecordBreachNotificationResponse
    )
    list_notification_attempts = Unary(
        "ListNotificationAttempts", pb.ListNotificationAttemptsRequest, pb.ListNotificationAttemptsResponse
    )
