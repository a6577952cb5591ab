"""Typed clients of the deployment server: DeploymentClient, FlagClient, ExperimentClient and ChaosClient."""

from __future__ import annotations

from clients.rpc import ServerStream, ServiceClient, Unary
from shieldx.deployment.v1 import chaos_pb2, deployment_pb2, experiments_pb2, faults_pb2, flags_pb2, routing_pb2


class DeploymentClient(ServiceClient):
    """Progressive delivery, the instance registry, traffic routes and fault injection."""

    service = "shieldx.deployment.v1.DeploymentService"

    create_deployment = Unary(
        "CreateDeployment", deployment_pb2.CreateDeploymentRequest, deployment_pb2.CreateDeploymentResponse
    )
    get_deployment = Unary("GetDeployment", deployment_pb2.GetDeploymentRequest, deployment_pb2.GetDeploymentResponse)
    list_deployments = Unary(
        "ListDeployments", deployment_pb2.ListDeploymentsRequest, deployment_pb2.ListDeploymentsResponse
    )
    promote_deployment = Unary(
        "PromoteDeployment", deployment_pb2.PromoteDeploymentRequest, deployment_pb2.PromoteDeploymentResponse
    )
    pause_deployment = Unary(
        "PauseDeployment", deployment_pb2.PauseDeploymentRequest, deployment_pb2.PauseDeploymentResponse
    )
    resume_deployment = Unary(
        "ResumeDeployment", deployment_pb2.ResumeDeploymentRequest, deployment_pb2.ResumeDeploymentResponse
    )
    abort_deployment = Unary(
        "AbortDeployment", deployment_pb2.AbortDeploymentRequest, deployment_pb2.AbortDeploymentResponse
    )
    watch_deployment = ServerStream(
        "WatchDeployment", deployment_pb2.WatchDeploymentRequest, deployment_pb2.WatchDeploymentResponse
    )
    register_instance = Unary(
        "RegisterInstance", routing_pb2.RegisterInstanceRequest, routing_pb2.RegisterInstanceResponse
    )
    deregister_instance = Unary(
        "DeregisterInstance", routing_pb2.DeregisterInstanceRequest, routing_pb2.DeregisterInstanceResponse
    )
    list_instances = Unary("ListInstances", routing_pb2.ListInstancesRequest, routing_pb2.ListInstancesResponse)
    get_routes = Unary("GetRoutes", routing_pb2.GetRoutesRequest, routing_pb2.GetRoutesResponse)
    watch_routes = ServerStream("WatchRoutes", routing_pb2.WatchRoutesRequest, routing_pb2.WatchRoutesResponse)
    set_route_weights = Unary(
        "SetRouteWeights", routing_pb2.SetRouteWeightsRequest, routing_pb2.SetRouteWeightsResponse
    )
    create_fault_injection = Unary(
        "CreateFaultInjection", faults_pb2.CreateFaultInjectionRequest, faults_pb2.CreateFaultInjectionResponse
    )
    list_fault_injections = Unary(
        "ListFaultInjections", faults_pb2.ListFaultInjectionsRequest, faults_pb2.ListFaultInjectionsResponse
    )
    delete_fault_injection = Unary(
        "DeleteFaultInjection", faults_pb2.DeleteFaultInjectionRequest, faults_pb2.DeleteFaultInjectionResponse
    )
    watch_fault_injections = ServerStream(
        "WatchFaultInjections", faults_pb2.WatchFaultInjectionsRequest, faults_pb2.WatchFaultInjectionsResponse
    )


class FlagClient(ServiceClient):
    """Feature flags: flagd-shaped resolution, definitions, target groups and their audit log."""

    service = "shieldx.deployment.v1.FlagService"

    resolve_boolean = Unary("ResolveBoolean", flags_pb2.ResolveBooleanRequest, flags_pb2.ResolveBooleanResponse)
    resolve_string = Unary("ResolveString", flags_pb2.ResolveStringRequest, flags_pb2.ResolveStringResponse)
    resolve_int = Unary("ResolveInt", flags_pb2.ResolveIntRequest, flags_pb2.ResolveIntResponse)
    resolve_float = Unary("ResolveFloat", flags_pb2.ResolveFloatRequest, flags_pb2.ResolveFloatResponse)
    resolve_object = Unary("ResolveObject", flags_pb2.ResolveObjectRequest, flags_pb2.ResolveObjectResponse)
    resolve_all = Unary("ResolveAll", flags_pb2.ResolveAllRequest, flags_pb2.ResolveAllResponse)
    event_stream = ServerStream("EventStream", flags_pb2.EventStreamRequest, flags_pb2.EventStreamResponse)
    put_flag = Unary("PutFlag", flags_pb2.PutFlagRequest, flags_pb2.PutFlagResponse)
    get_flag = Unary("GetFlag", flags_pb2.GetFlagRequest, flags_pb2.GetFlagResponse)
    list_flags = Unary("ListFlags", flags_pb2.ListFlagsRequest, flags_pb2.ListFlagsResponse)
    delete_flag = Unary("DeleteFlag", flags_pb2.DeleteFlagRequest, flags_pb2.DeleteFlagResponse)
    list_flag_audit = Unary("ListFlagAudit", flags_pb2.ListFlagAuditRequest, flags_pb2.ListFlagAuditResponse)
    put_target_group = Unary("PutTargetGroup", flags_pb2.PutTargetGroupRequest, flags_pb2.PutTargetGroupResponse)
    list_target_groups = Unary(
        "ListTargetGroups", flags_pb2.ListTargetGroupsRequest, flags_pb2.ListTargetGroupsResponse
    )
    delete_target_group = Unary(
        "DeleteTargetGroup", flags_pb2.DeleteTargetGroupRequest, flags_pb2.DeleteTargetGroupResponse
    )


class ExperimentClient(ServiceClient):
    """A/B tests: counts, Beta-Binomial results and deploying the winner."""

    service = "shieldx.deployment.v1.ExperimentService"

    create_experiment = Unary(
        "CreateExperiment", experiments_pb2.CreateExperimentRequest, experiments_pb2.CreateExperimentResponse
    )
    get_experiment = Unary("GetExperiment", experiments_pb2.GetExperimentRequest, experiments_pb2.GetExperimentResponse)
    list_experiments = Unary(
        "ListExperiments", experiments_pb2.ListExperimentsRequest, experiments_pb2.ListExperimentsResponse
    )
    record_exposure = Unary(
        "RecordExposure", experiments_pb2.RecordExposureRequest, experiments_pb2.RecordExposureResponse
    )
    record_outcome = Unary("RecordOutcome", experiments_pb2.RecordOutcomeRequest, experiments_pb2.RecordOutcomeResponse)
    get_experiment_results = Unary(
        "GetExperimentResults",
        experiments_pb2.GetExperimentResultsRequest,
        experiments_pb2.GetExperimentResultsResponse,
    )
    deploy_winner = Unary("DeployWinner", experiments_pb2.DeployWinnerRequest, experiments_pb2.DeployWinnerResponse)


class ChaosClient(ServiceClient):
    """Chaos experiments: create, start, abort and watch them, their reports, and schedules."""

    service = "shieldx.deployment.v1.ChaosService"

    create_experiment = Unary(
        "CreateChaosExperiment", chaos_pb2.CreateChaosExperimentRequest, chaos_pb2.CreateChaosExperimentResponse
    )
    get_experiment = Unary(
        "GetChaosExperiment", chaos_pb2.GetChaosExperimentRequest, chaos_pb2.GetChaosExperimentResponse
    )
    list_experiments = Unary(
        "ListChaosExperiments", chaos_pb2.ListChaosExperimentsRequest, chaos_pb2.ListChaosExperimentsResponse
    )
    start_experiment = Unary(
        "StartChaosExperiment", chaos_pb2.StartChaosExperimentRequest, chaos_pb2.StartChaosExperimentResponse
    )
    abort_experiment = Unary(
        "AbortChaosExperiment", chaos_pb2.AbortChaosExperimentRequest, chaos_pb2.AbortChaosExperimentResponse
    )
    watch_experiment = ServerStream(
        "WatchChaosExperiment", chaos_pb2.WatchChaosExperimentRequest, chaos_pb2.WatchChaosExperimentResponse
    )
    get_report = Unary("GetChaosReport", chaos_pb2.GetChaosReportRequest, chaos_pb2.GetChaosReportResponse)
    create_schedule = Unary(
        "CreateChaosSchedule", chaos_pb2.CreateChaosScheduleRequest, chaos_pb2.CreateChaosScheduleResponse
    )
    list_schedules = Unary(
        "ListChaosSchedules", chaos_pb2.ListChaosSchedulesRequest, chaos_pb2.ListChaosSchedulesResponse
    )
    delete_schedule = Unary(
        "DeleteChaosSchedule", chaos_pb2.DeleteChaosScheduleRequest, chaos_pb2.DeleteChaosScheduleResponse
    )
