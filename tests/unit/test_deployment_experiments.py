"""A/B tests: Beta-Binomial results, the sample guard, winners, counts and validation."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from servers.deployment.experiments import (
    ArmCounts,
    BindingKind,
    Decision,
    Experiment,
    ExperimentState,
    add_conversions,
    add_exposures,
    analyse,
    conclude,
    flag_with_winner,
    new_experiment,
    require_winner,
    route_weights_with_winner,
)
from servers.deployment.flagset import FlagSet
from servers.mesh.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def experiment(variants: tuple[str, ...] = ("b",), min_exposures: int = 1000, threshold: float = 0.0) -> Experiment:
    return new_experiment(
        experiment_id="exp-1",
        name="checkout button",
        control="a",
        variants=list(variants),
        binding=BindingKind.FLAG,
        target="checkout-button",
        created_at=NOW,
        min_exposures_per_arm=min_exposures,
        win_probability=threshold,
    )


def simulate(rates: dict[str, float], units: int, seed: int) -> dict[str, ArmCounts]:
    """Exposures and conversions drawn from true conversion rates, as users would produce them."""
    rng = np.random.default_rng(seed)
    return {arm: ArmCounts(units, int(rng.binomial(units, rate))) for arm, rate in rates.items()}


def test_a_known_better_variant_is_declared_the_winner() -> None:
    test = experiment()
    counts = simulate({"a": 0.10, "b": 0.13}, units=5000, seed=7)
    results = analyse(test, counts)
    assert (results.decision, results.winner) == (Decision.VARIANT_WINS, "b")
    better = results.arms[1]
    assert better.probability_to_beat_control >= 0.95
    assert better.probability_best >= 0.95
    assert better.expected_loss < results.arms[0].expected_loss
    assert require_winner(results) == "b"


def test_equal_variants_are_not_declared_winners_within_the_sample_guard() -> None:
    test = experiment(min_exposures=1000)
    for units in (50, 200, 999):  # every peek before the guard
        results = analyse(test, simulate({"a": 0.10, "b": 0.10}, units, seed=units))
        assert (results.decision, results.winner) == (Decision.SAMPLE_GUARD_NOT_MET, "")
        assert not any(arm.sample_guard_met for arm in results.arms)
        with pytest.raises(FailedPrecondition) as caught:
            require_winner(results)
        assert caught.value.reason == "NO_WINNER"


def test_equal_variants_past_the_guard_do_not_produce_a_winner() -> None:
    test = experiment(min_exposures=1000)
    results = analyse(test, {"a": ArmCounts(4000, 400), "b": ArmCounts(4000, 400)})
    assert results.decision is Decision.NO_WINNER_YET
    assert 0.4 < results.arms[1].probability_to_beat_control < 0.6


def test_even_a_large_early_lead_waits_for_the_sample_guard() -> None:
    test = experiment(min_exposures=1000)
    results = analyse(test, {"a": ArmCounts(300, 10), "b": ArmCounts(300, 90)})
    assert results.arms[1].probability_to_beat_control > 0.999
    assert results.decision is Decision.SAMPLE_GUARD_NOT_MET


def test_a_worse_variant_makes_the_control_the_winner() -> None:
    results = analyse(experiment(), {"a": ArmCounts(5000, 700), "b": ArmCounts(5000, 500)})
    assert (results.decision, results.winner) == (Decision.CONTROL_WINS, "a")


def test_the_best_of_several_winning_variants_is_chosen() -> None:
    test = experiment(variants=("b", "c"))
    results = analyse(test, {"a": ArmCounts(6000, 600), "b": ArmCounts(6000, 780), "c": ArmCounts(6000, 900)})
    assert (results.decision, results.winner) == (Decision.VARIANT_WINS, "c")
    assert sum(arm.probability_best for arm in results.arms) == pytest.approx(1.0)


def test_posteriors_match_the_beta_binomial_closed_forms() -> None:
    results = analyse(experiment(), {"a": ArmCounts(1000, 100), "b": ArmCounts(1000, 150)})
    control = results.arms[0]
    assert control.posterior_mean == pytest.approx(101 / 1002)
    low, high = control.credible_interval
    # Normal approximation of Beta(101, 901): mean 0.1008, sd 0.00951.
    assert low == pytest.approx(0.1008 - 1.96 * 0.00951, abs=0.002)
    assert high == pytest.approx(0.1008 + 1.96 * 0.00951, abs=0.002)
    assert control.probability_to_beat_control == 0.5


def test_results_are_reproducible_for_the_same_counts() -> None:
    counts = {"a": ArmCounts(2000, 200), "b": ArmCounts(2000, 230)}
    first, second = analyse(experiment(), counts), analyse(experiment(), counts)
    assert first == second
    assert analyse(experiment(), counts, seed=first.seed + 1).arms != first.arms


def test_a_stricter_threshold_withholds_a_borderline_winner() -> None:
    counts = {"a": ArmCounts(3000, 300), "b": ArmCounts(3000, 345)}
    lenient = analyse(experiment(threshold=0.9), counts)
    strict = analyse(experiment(threshold=0.999), counts)
    assert 0.9 <= lenient.arms[1].probability_to_beat_control < 0.999
    assert lenient.decision is Decision.VARIANT_WINS
    assert strict.decision is Decision.NO_WINNER_YET


def test_counts_accumulate_in_batches_and_conversions_never_exceed_exposures() -> None:
    test = experiment()
    counts = add_exposures(test, {}, [("a", 10), ("b", 5), ("a", 2)])
    counts = add_conversions(test, counts, [("a", 3)])
    assert counts == {"a": ArmCounts(12, 3), "b": ArmCounts(5, 0)}
    with pytest.raises(FailedPrecondition) as caught:
        add_conversions(test, counts, [("b", 6)])
    assert caught.value.reason == "CONVERSIONS_EXCEED_EXPOSURES"


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        ([], "exposures"),
        ([("z", 1)], "exposures[0].arm"),
        ([("a", 1), ("b", 0)], "exposures[1].count"),
        ([("a", -3)], "exposures[0].count"),
    ],
)
def test_bad_batches_name_the_field(batch: list[tuple[str, int]], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        add_exposures(experiment(), {}, batch)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": " "}, "name"),
        ({"control": ""}, "control"),
        ({"variants": []}, "variants"),
        ({"variants": ["b", "b"]}, "variants[1]"),
        ({"variants": ["a"]}, "variants[0]"),
        ({"variants": ["zz"], "available_arms": ["a", "b"]}, "variants[0]"),
        ({"min_exposures_per_arm": -1}, "min_exposures_per_arm"),
        ({"win_probability": 0.4}, "win_probability"),
        ({"win_probability": 1.0}, "win_probability"),
        ({"win_probability": float("nan")}, "win_probability"),
        ({"target": "bad key!"}, "flag.flag_key"),
    ],
)
def test_invalid_experiments_name_the_field(changes: dict[str, object], field: str) -> None:
    request: dict[str, object] = {
        "experiment_id": "e",
        "name": "n",
        "control": "a",
        "variants": ["b"],
        "binding": BindingKind.FLAG,
        "target": "f",
        "created_at": NOW,
    }
    request.update(changes)
    with pytest.raises(InvalidArgument) as caught:
        new_experiment(**request)  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == field


def test_defaults_fill_in_the_guard_and_threshold() -> None:
    test = new_experiment(
        experiment_id="e",
        name="n",
        control="a",
        variants=["b"],
        binding=BindingKind.ROUTE,
        target="credits",
        created_at=NOW,
    )
    assert (test.min_exposures_per_arm, test.win_probability) == (1000, 0.95)


def test_deploying_the_winner_concludes_the_experiment_and_stops_counting() -> None:
    concluded = conclude(experiment(), "b", NOW)
    assert (concluded.state, concluded.winner, concluded.concluded_at) == (ExperimentState.CONCLUDED, "b", NOW)
    with pytest.raises(FailedPrecondition) as caught:
        add_exposures(concluded, {}, [("a", 1)])
    assert caught.value.reason == "EXPERIMENT_CONCLUDED"
    with pytest.raises(FailedPrecondition):
        conclude(concluded, "b", NOW)


def test_a_flag_winner_serves_everyone_and_a_route_winner_takes_all_traffic() -> None:
    flag = FlagSet().parse(
        "checkout-button",
        '{"variants": {"a": "blue", "b": "green"}, "defaultVariant": "a",'
        ' "targeting": {"fractional": [["a", 50], ["b", 50]]}}',
    )
    deployed = flag_with_winner(flag, "b")
    assert (deployed.default_variant, deployed.targeting) == ("b", None)
    with pytest.raises(FailedPrecondition):
        flag_with_winner(flag, "c")
    assert route_weights_with_winner("v2") == {"v2": 10_000}
