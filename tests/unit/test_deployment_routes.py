"""Traffic routes: weights, instances, the weighted and sticky picker; fault injections."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from clients.routes import NoRoute, Route, RoutePicker
from servers.deployment.faults import FaultInjection, new_fault_injection
from servers.deployment.routes import (
    build_route,
    check_registrant,
    check_sticky_key,
    check_weights,
    new_instance,
    split_weights,
    weights_after_registration,
)
from servers.mesh.errors import InvalidArgument, PermissionDenied

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def route(weights: dict[str, int], instances: dict[str, int] | None = None) -> Route:
    counts = instances if instances is not None else {version: 1 for version in weights}
    registered = [
        new_instance("credits", version, f"10.0.0.{i}:{5000 + n}", "", NOW)
        for n, (version, count) in enumerate(counts.items())
        for i in range(1, count + 1)
    ]
    return build_route("credits", weights, registered, revision=1)


def shares(picker: RoutePicker, picks: list[str]) -> dict[str, float]:
    return {version: picks.count(version) / len(picks) for version in picker.versions}


def test_random_picks_follow_the_weights_within_a_point() -> None:
    picker = RoutePicker(route({"v1": 9000, "v2": 1000}))
    rng = random.Random(42)
    picks = [picker.pick(rng=rng) for _ in range(100_000)]
    assert shares(picker, picks)["v2"] == pytest.approx(0.10, abs=0.01)


def test_sticky_values_stay_on_one_version_and_split_by_weight() -> None:
    picker = RoutePicker(route(split_weights("v1", "v2", 25)))
    users = [f"user-{i}" for i in range(20_000)]
    first = [picker.pick(user) for user in users]
    assert first == [picker.pick(user) for user in users]
    assert shares(picker, first)["v2"] == pytest.approx(0.25, abs=0.015)


def test_raising_a_canary_weight_only_moves_sticky_callers_onto_it() -> None:
    users = [f"user-{i}" for i in range(10_000)]
    previous: set[str] = set()
    for percent in (0, 10, 25, 50, 100):
        picker = RoutePicker(route(split_weights("v1", "v2", percent)))
        on_canary = {user for user in users if picker.pick(user) == "v2"}
        assert previous <= on_canary
        previous = on_canary
    assert previous == set(users)


def test_the_same_sticky_value_lands_independently_in_different_services() -> None:
    weights = split_weights("v1", "v2", 50)
    credits = RoutePicker(route(weights))
    tokens = RoutePicker(
        build_route(
            "tokens",
            weights,
            [new_instance("tokens", v, f"h:{p}", "", NOW) for v, p in (("v1", 1), ("v2", 2))],
            revision=1,
        )
    )
    users = [f"user-{i}" for i in range(4000)]
    same = sum(credits.pick(u) == tokens.pick(u) for u in users) / len(users)
    assert same == pytest.approx(0.5, abs=0.05)  # not 1.0: users are not canaries everywhere at once


def test_weight_of_a_version_without_instances_goes_to_the_others() -> None:
    picker = RoutePicker(route({"v1": 5000, "v2": 3000, "v3": 2000}, instances={"v1": 1, "v2": 0, "v3": 1}))
    assert picker.versions == ["v1", "v3"]
    picks = [picker.pick(rng=random.Random(i)) for i in range(20_000)]
    assert shares(picker, picks)["v1"] == pytest.approx(5 / 7, abs=0.02)


def test_without_weighted_instances_calls_spread_over_what_is_running() -> None:
    picker = RoutePicker(route({"v1": 10_000, "v2": 0}, instances={"v1": 0, "v2": 2}))
    assert picker.versions == ["v2"]
    with pytest.raises(NoRoute):
        RoutePicker(route({"v1": 10_000}, instances={"v1": 0})).pick()


def test_routes_list_every_version_sorted_with_its_addresses() -> None:
    built = route({"v2": 1000, "v1": 9000}, instances={"v1": 2, "v2": 1, "v3": 1})
    assert [(v.version, v.weight_bp, len(v.addresses)) for v in built.versions] == [
        ("v1", 9000, 2),
        ("v2", 1000, 1),
        ("v3", 0, 1),
    ]
    assert list(built.versions[0].addresses) == sorted(built.versions[0].addresses)


def test_the_first_version_takes_all_traffic_and_later_ones_join_without_any() -> None:
    first = weights_after_registration({}, "v1")
    assert first == {"v1": 10_000}
    assert weights_after_registration(first, "v2") == {"v1": 10_000, "v2": 0}
    assert weights_after_registration({"v1": 0}, "v2") == {"v1": 0, "v2": 10_000}


@pytest.mark.parametrize(
    ("weights", "field"),
    [
        ([], "weights"),
        ([("v1", 6000), ("v2", 3000)], "weights"),
        ([("v1", 10_001), ("v2", -1)], "weights[0].weight_bp"),
        ([("v1", 5000), ("v1", 5000)], "weights[1].version"),
        ([("bad version", 10_000)], "weights[0].version"),
    ],
)
def test_bad_weights_name_the_field(weights: list[tuple[str, int]], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_weights(weights)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize(
    ("service", "version", "address", "metrics", "field"),
    [
        ("Credits", "v1", "h:1", "", "service"),
        ("credits", "", "h:1", "", "version"),
        ("credits", "v1", "h", "", "address"),
        ("credits", "v1", "h:0", "", "address"),
        ("credits", "v1", "h:70000", "", "address"),
        ("credits", "v1", ":80", "", "address"),
        ("credits", "v1", "h:80", "ftp://h/metrics", "metrics_endpoint"),
        ("credits", "v1", "h:80", "http://h:99999/metrics", "metrics_endpoint"),
    ],
)
def test_bad_instances_name_the_field(service: str, version: str, address: str, metrics: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        new_instance(service, version, address, metrics, NOW)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize(
    "metrics",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.9:9004/metrics", "http://metadata.google.internal/"],
)
def test_metrics_endpoints_on_another_host_are_refused(metrics: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        new_instance("credits", "v1", "10.0.0.7:5004", metrics, NOW)
    assert caught.value.metadata["field"] == "metrics_endpoint" and caught.value.reason == "METRICS_HOST_NOT_ALLOWED"
    allowed = new_instance("credits", "v1", "10.0.0.7:5004", metrics, NOW, metrics_hosts=[urlsplit(metrics).hostname])
    assert allowed.metrics_endpoint == metrics


def test_only_the_services_own_workload_or_an_admin_may_register_it() -> None:
    check_registrant("credits", "credits", frozenset({"deployment.register"}))
    check_registrant("tokens", "admin", frozenset({"deployment.register", "deployment.admin"}))
    check_registrant("tokens", "", frozenset())  # auth off: no identity to check
    with pytest.raises(PermissionDenied) as caught:
        check_registrant("tokens", "deception", frozenset({"deployment.register"}))
    assert caught.value.reason == "INSTANCE_OF_ANOTHER_SERVICE"


def test_good_instances_register() -> None:
    instance = new_instance("credits", "v2", "[::1]:5004", "http://127.0.0.1:9004/metrics", NOW)
    assert (instance.address, instance.metrics_endpoint) == ("[::1]:5004", "http://127.0.0.1:9004/metrics")


@pytest.mark.parametrize("key", ["X-User", "grpc-user", "user-bin", "user id"])
def test_sticky_keys_must_be_plain_metadata_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        check_sticky_key(key)
    assert check_sticky_key("x-user-id") == "x-user-id"


# -- fault injections -----------------------------------------------------------------------------------------


def fault(**changes: object) -> FaultInjection:
    request: dict[str, object] = {
        "fault_id": "f1",
        "service": "credits",
        "method_pattern": "shieldx.credits.v1.CreditsService/*",
        "delay": 0.0,
        "abort_code": 14,
        "percentage": 20.0,
        "duration": 600.0,
        "now": NOW,
    }
    request.update(changes)
    return new_fault_injection(**request)  # type: ignore[arg-type]


def test_a_fault_matches_its_methods_until_it_expires() -> None:
    created = new_fault_injection(
        fault_id="f1",
        service="credits",
        method_pattern="shieldx.credits.v1.CreditsService/Consume*",
        delay=0.5,
        abort_code=0,
        percentage=100.0,
        duration=60.0,
        now=NOW,
        version="v2",
    )
    assert created.matches("/shieldx.credits.v1.CreditsService/ConsumeCredits")
    assert not created.matches("shieldx.credits.v1.CreditsService/GetBalance")
    assert created.active(NOW + timedelta(seconds=59))
    assert not created.active(NOW + timedelta(seconds=60))
    assert created.version == "v2"


def test_an_empty_pattern_means_every_method() -> None:
    assert fault(method_pattern="").method_pattern == "*"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"service": ""}, "service"),
        ({"method_pattern": "has space"}, "method_pattern"),
        ({"delay": -1.0}, "delay"),
        ({"delay": 61.0}, "delay"),
        ({"abort_code": 17}, "abort_code"),
        ({"abort_code": 0, "delay": 0.0}, "abort_code"),
        ({"percentage": 0.0}, "percentage"),
        ({"percentage": 100.1}, "percentage"),
        ({"percentage": float("nan")}, "percentage"),
        ({"duration": 0.0}, "duration"),
        ({"duration": 90_000.0}, "duration"),
        ({"version": "not a version"}, "version"),
    ],
)
def test_bad_fault_injections_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        fault(**changes)
    assert caught.value.metadata["field"] == field
