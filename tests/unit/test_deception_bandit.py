"""Adaptive decoy selection: regret against simulated attackers, logging, feedback and offline replay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servers.deception.bandit import ContextBuckets, DecoySelector, SelectionCounts
from servers.deception.policies import OVERFLOW_BUCKET, BanditConfig, BanditCore, SelectionPolicy
from servers.deception.policy_evaluation import (
    AttackerPopulation,
    LoggedRound,
    SimulationResult,
    replay,
    simulate,
)
from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

DECOYS = ("ssh", "http", "mysql", "redis", "ftp", "smtp")
ROUNDS = 10_000
SWITCH = 5_000

# Three kinds of attacker with known tastes; at round 5,000 every kind changes its favourite.
ATTACKERS = AttackerPopulation(
    contexts=("stage=scan", "stage=login", "stage=exploit"),
    frequencies=(0.5, 0.3, 0.2),
    engagement=(
        (0.10, 0.30, 0.05, 0.15, 0.08, 0.04),
        (0.50, 0.20, 0.35, 0.10, 0.15, 0.05),
        (0.15, 0.45, 0.20, 0.60, 0.10, 0.05),
    ),
    switch_round=SWITCH,
    engagement_after=(
        (0.30, 0.05, 0.10, 0.08, 0.40, 0.04),
        (0.10, 0.20, 0.15, 0.55, 0.15, 0.05),
        (0.50, 0.10, 0.20, 0.15, 0.10, 0.05),
    ),
)


def run(policy: SelectionPolicy, discount: float | None = None, seed: int = 1) -> SimulationResult:
    config = BanditConfig() if discount is None else BanditConfig(discount=discount)
    return simulate(ATTACKERS, DECOYS, policy, ROUNDS, config=config, seed=seed)


@pytest.fixture(scope="module")
def thompson() -> SimulationResult:
    return run(SelectionPolicy.THOMPSON)


@pytest.fixture(scope="module")
def random_choice() -> SimulationResult:
    return run(SelectionPolicy.RANDOM)


def window(result: SimulationResult, start: int, end: int) -> float:
    return float(result.regret[end - 1] - result.regret[start - 1])


# --- regret against simulated attackers --------------------------------------------------------


def test_thompson_regret_after_10000_rounds_is_well_below_random(
    thompson: SimulationResult, random_choice: SimulationResult
) -> None:
    # Measured with seed 1: Thompson ≈ 560, random ≈ 2,630 (expected-value regret vs the best decoy).
    assert thompson.rounds == ROUNDS
    assert thompson.regret[-1] < 0.35 * random_choice.regret[-1]
    # The simulator's closed-form regret of random choice agrees with the simulated random run.
    assert random_choice.regret[-1] == pytest.approx(thompson.random_regret[-1], rel=0.05)


def test_thompson_adapts_after_the_attackers_switch(
    thompson: SimulationResult, random_choice: SimulationResult
) -> None:
    jolt = window(thompson, SWITCH, SWITCH + 1000)
    settled = window(thompson, ROUNDS - 1000, ROUNDS)
    # Right after the switch the old favourites are wrong and regret jumps; a few thousand
    # rounds later the policy has moved to the new favourites and regret per round is back down.
    assert settled < 0.5 * jolt
    assert settled < 0.3 * window(random_choice, ROUNDS - 1000, ROUNDS)


def test_ucb1_also_beats_random(random_choice: SimulationResult) -> None:
    ucb = run(SelectionPolicy.UCB1)
    assert ucb.regret[-1] < 0.5 * random_choice.regret[-1]


def test_discounting_helps_thompson_after_a_switch(thompson: SimulationResult) -> None:
    # Measured with seed 1 over rounds 5,000-7,000: γ = 0.998 ≈ 258, γ = 1 ≈ 495.
    undiscounted = run(SelectionPolicy.THOMPSON, discount=1.0)
    after_switch = slice(SWITCH, SWITCH + 2000)
    assert window(thompson, after_switch.start, after_switch.stop) < 0.6 * window(
        undiscounted, after_switch.start, after_switch.stop
    )


def test_without_discounting_thompson_converges_on_stationary_attackers(random_choice: SimulationResult) -> None:
    stationary = AttackerPopulation(ATTACKERS.contexts, ATTACKERS.frequencies, ATTACKERS.engagement)
    result = simulate(stationary, DECOYS, SelectionPolicy.THOMPSON, ROUNDS, config=BanditConfig(discount=1.0))
    assert result.regret[-1] < 0.1 * random_choice.regret[-1]


def test_the_same_seed_gives_the_same_simulation() -> None:
    first = simulate(ATTACKERS, DECOYS, SelectionPolicy.THOMPSON, 500, seed=9)
    second = simulate(ATTACKERS, DECOYS, SelectionPolicy.THOMPSON, 500, seed=9)
    assert np.array_equal(first.regret, second.regret)


# --- the selector ------------------------------------------------------------------------------


def test_a_selection_is_reproducible_from_its_recorded_seed() -> None:
    selector = DecoySelector(DECOYS, seed=3, clock=lambda: 100.0)
    for _ in range(30):
        made = selector.select("stage=scan")
        selector.submit_feedback(made.selection_id, 1.0 if made.decoy_id == "http" else 0.0)
    made = selector.select("stage=scan")
    # The recorded seed and the posteriors at selection time determine the choice.
    core = BanditCore(DECOYS, selector.config)
    engaged = [s.posterior_alpha - selector.config.prior_alpha for s in made.scores]
    ignored = [s.posterior_beta - selector.config.prior_beta for s in made.scores]
    core.restore("stage=scan", engaged, ignored)
    assert DECOYS[core.pick("stage=scan", made.policy, np.random.default_rng(made.seed))] == made.decoy_id
    assert made.draw == 30 and made.select_time == 100.0
    assert made.decoy_id == max(made.scores, key=lambda s: s.score).decoy_id


def test_callers_seed_is_used_and_draws_are_numbered() -> None:
    selector = DecoySelector(DECOYS, seed=1)
    a = selector.select("ctx", seed=42)
    b = DecoySelector(DECOYS, seed=2).select("ctx", seed=42)
    assert (a.seed, a.decoy_id) == (42, b.decoy_id)
    assert [selector.select("ctx").draw for _ in range(3)] == [1, 2, 3]
    assert selector.total_selections == 4


def test_propensities_are_probabilities_of_the_choice() -> None:
    selector = DecoySelector(DECOYS, seed=1)
    assert selector.select("c", SelectionPolicy.RANDOM).propensity == pytest.approx(1 / 6)
    # Fresh UCB1: every decoy is untried and tied, so each is equally likely.
    assert selector.select("c", SelectionPolicy.UCB1).propensity == pytest.approx(1 / 6)
    thompson = selector.select("c", SelectionPolicy.THOMPSON)
    assert 0.05 < thompson.propensity < 0.35


def test_feedback_updates_the_chosen_decoys_stats() -> None:
    selector = DecoySelector(DECOYS, BanditConfig(discount=1.0), seed=5)
    made = selector.select("ctx", SelectionPolicy.RANDOM)
    stats = selector.submit_feedback(made.selection_id, 1.0)
    assert stats.decoy_id == made.decoy_id
    assert (stats.selections, stats.feedbacks, stats.reward_sum) == (1, 1, 1.0)
    assert stats.engagement_rate == 1.0
    assert (stats.posterior_alpha, stats.posterior_beta) == (2.0, 1.0)
    assert stats.posterior_mean == pytest.approx(2 / 3)


def test_old_evidence_fades_by_the_discount() -> None:
    selector = DecoySelector(DECOYS, BanditConfig(discount=0.5), seed=5)
    first = selector.select("ctx", SelectionPolicy.RANDOM)
    selector.submit_feedback(first.selection_id, 1.0)
    second = selector.select("ctx", SelectionPolicy.RANDOM)
    selector.submit_feedback(second.selection_id, 0.0)
    by_decoy = {s.decoy_id: s for s in selector.stats("ctx")}
    if first.decoy_id != second.decoy_id:
        assert by_decoy[first.decoy_id].posterior_alpha == pytest.approx(1.5)
        assert by_decoy[second.decoy_id].posterior_beta == pytest.approx(2.0)
    else:
        assert by_decoy[first.decoy_id].posterior_alpha == pytest.approx(1.5)
        assert by_decoy[first.decoy_id].posterior_beta == pytest.approx(2.0)


def test_stats_sum_over_buckets() -> None:
    selector = DecoySelector(DECOYS, seed=5)
    for context in ("a", "b", "a"):
        selector.submit_feedback(selector.select(context).selection_id, 0.5)
    assert sum(s.selections for s in selector.stats()) == 3
    assert sum(s.selections for s in selector.stats("a")) == 2
    assert sum(s.reward_sum for s in selector.stats()) == pytest.approx(1.5)


def test_feedback_twice_or_for_unknown_selections_is_refused() -> None:
    selector = DecoySelector(DECOYS, seed=5)
    made = selector.select("ctx")
    selector.submit_feedback(made.selection_id, 0.0)
    with pytest.raises(FailedPrecondition) as twice:
        selector.submit_feedback(made.selection_id, 1.0)
    assert twice.value.reason == "FEEDBACK_ALREADY_SUBMITTED"
    with pytest.raises(NotFound) as unknown:
        selector.submit_feedback("sel_missing", 1.0)
    assert unknown.value.reason == "SELECTION_NOT_FOUND"


def test_forgotten_selections_are_not_found() -> None:
    selector = DecoySelector(DECOYS, BanditConfig(max_pending=2), seed=5)
    oldest = selector.select("ctx")
    selector.select("ctx")
    selector.select("ctx")
    with pytest.raises(NotFound):
        selector.selection(oldest.selection_id)


@pytest.mark.parametrize("reward", [-0.1, 1.5, math.nan, math.inf])
def test_rewards_outside_0_1_are_refused(reward: float) -> None:
    selector = DecoySelector(DECOYS, seed=5)
    made = selector.select("ctx")
    with pytest.raises(InvalidArgument) as caught:
        selector.submit_feedback(made.selection_id, reward)
    assert caught.value.metadata["field"] == "reward"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (BanditConfig(discount=0.0), "discount"),
        (BanditConfig(discount=1.01), "discount"),
        (BanditConfig(discount=math.nan), "discount"),
        (BanditConfig(prior_alpha=0.0), "prior_alpha"),
        (BanditConfig(exploration=-1.0), "exploration"),
        (BanditConfig(max_buckets=0), "max_buckets"),
    ],
)
def test_bad_settings_name_the_setting(config: BanditConfig, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        DecoySelector(DECOYS, config)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize("decoys", [(), ("ssh", "ssh"), ("ssh", "")])
def test_decoy_sets_must_be_distinct_and_non_empty(decoys: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        DecoySelector(decoys)
    assert caught.value.metadata["field"] == "decoy_ids"


def test_seeds_outside_uint64_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        DecoySelector(DECOYS).select("ctx", seed=-1)
    assert caught.value.metadata["field"] == "seed"


def test_contexts_beyond_the_bucket_limit_share_one_bucket() -> None:
    selector = DecoySelector(DECOYS, BanditConfig(max_buckets=2), seed=1)
    for context in ("a", "b"):
        selector.submit_feedback(selector.select(context).selection_id, 1.0)
    assert selector.select("c").bucket == OVERFLOW_BUCKET
    assert selector.select("a").bucket == "a"


def test_context_keys_keep_only_coarse_features() -> None:
    buckets = ContextBuckets()
    key = buckets.key("BANNER_GRAB", {"tool": "Nmap", "user_agent": "Mozilla/5.0 (X11)"})
    assert key == "stage=banner_grab|tool=nmap|target_service=-"
    long_tool = buckets.key("scan", {"tool": "x" * 500 + "|stage=exploit"})
    assert len(long_tool) < 100 and long_tool.count("|") == 2


# --- offline replay ----------------------------------------------------------------------------


def logged_uniform(rounds: int, seed: int = 4) -> list[LoggedRound]:
    """A log made by uniformly random selection against the stationary attackers."""
    rng = np.random.default_rng(seed)
    engagement = np.asarray(ATTACKERS.engagement)
    frequencies = np.asarray(ATTACKERS.frequencies)
    log = []
    for _ in range(rounds):
        context = int(rng.choice(3, p=frequencies))
        arm = int(rng.integers(len(DECOYS)))
        reward = float(rng.random() < engagement[context, arm])
        log.append(LoggedRound(ATTACKERS.contexts[context], DECOYS[arm], reward, 1 / len(DECOYS)))
    return log


def test_replay_of_a_random_log_shows_thompson_beating_random_choice() -> None:
    log = logged_uniform(30_000)
    report = replay(log, DECOYS, SelectionPolicy.THOMPSON, seed=2)
    # About one logged round in six matches the policy's choice.
    assert 3_500 < report.rounds < 6_500
    assert report.logged_rounds == 30_000
    assert report.regret_vs_random < 0  # negative: the policy collected more than random would
    assert report.policy_reward > 1.3 * report.random_reward
    # Thompson uses the context, so it can even beat the best single decoy.
    assert report.best_fixed_decoy_id in DECOYS
    assert report.curve[-1].round == report.rounds
    assert report.curve[-1].regret_vs_best_fixed == pytest.approx(report.regret_vs_best_fixed)
    assert report.curve[-1].random_regret_vs_best_fixed > report.curve[-1].regret_vs_best_fixed


def test_replay_of_random_choice_matches_random_on_average() -> None:
    report = replay(logged_uniform(20_000), DECOYS, SelectionPolicy.RANDOM, seed=3)
    assert report.policy_reward == pytest.approx(report.random_reward, rel=0.1)


def test_replay_stops_at_max_rounds_and_skips_unknown_decoys() -> None:
    log = [LoggedRound("ctx", "telnet", 1.0, 0.5), *logged_uniform(5_000)]
    report = replay(log, DECOYS, SelectionPolicy.UCB1, max_rounds=100)
    assert report.rounds == 100


def test_replay_of_an_empty_log_reports_nothing() -> None:
    report = replay([], DECOYS, SelectionPolicy.THOMPSON)
    assert (report.rounds, report.policy_reward, report.best_fixed_decoy_id, report.curve) == (0, 0.0, "", ())


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (LoggedRound("c", "ssh", 2.0, 0.5), "logged_rounds[0].reward"),
        (LoggedRound("c", "ssh", 1.0, 0.0), "logged_rounds[0].propensity"),
    ],
)
def test_replay_refuses_malformed_rounds(entry: LoggedRound, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        replay([entry], DECOYS, SelectionPolicy.THOMPSON)
    assert caught.value.metadata["field"] == field


def test_learned_evidence_survives_a_snapshot_and_restore() -> None:
    selector = DecoySelector(DECOYS, seed=8)
    for _ in range(20):
        made = selector.select("ctx")
        selector.submit_feedback(made.selection_id, 1.0 if made.decoy_id == "ssh" else 0.0)
    restored = DecoySelector(DECOYS, seed=8)
    for bucket, (engaged, ignored) in selector.snapshot().items():
        restored.restore(bucket, engaged, ignored)
    assert [s.posterior_mean for s in restored.stats("ctx")] == [s.posterior_mean for s in selector.stats("ctx")]
    with pytest.raises(InvalidArgument) as caught:
        restored.restore("ctx", [1.0], [1.0])
    assert caught.value.metadata["field"] == "evidence"


def test_a_selector_rebuilt_from_its_log_keeps_counts_draws_and_open_selections() -> None:
    selector = DecoySelector(DECOYS, seed=3)
    made = [selector.select("ctx", seed=i) for i in range(6)]
    for selection in made[:4]:
        selector.submit_feedback(selection.selection_id, 1.0 if selection.decoy_id == "ssh" else 0.25)
    counts = [
        SelectionCounts("ctx", s.decoy_id, s.selections, s.feedbacks, s.reward_sum)
        for s in selector.stats("ctx")
        if s.selections
    ]

    rebuilt = DecoySelector(DECOYS, seed=4)
    for bucket, (engaged, ignored) in selector.snapshot().items():
        rebuilt.restore(bucket, engaged, ignored)
    rebuilt.restore_history(counts, [(s, i < 4) for i, s in enumerate(made)], draws=6)

    assert rebuilt.stats("ctx") == selector.stats("ctx")
    assert rebuilt.total_selections == 6 and rebuilt.select("ctx").draw == 6
    rebuilt.submit_feedback(made[5].selection_id, 1.0)
    with pytest.raises(FailedPrecondition) as answered:
        rebuilt.submit_feedback(made[0].selection_id, 1.0)
    assert answered.value.reason == "FEEDBACK_ALREADY_SUBMITTED"


def test_history_of_decoys_no_longer_configured_is_skipped() -> None:
    selector = DecoySelector(("ssh", "http"))
    selector.restore_history([SelectionCounts("ctx", "telnet", 5, 5, 5.0)], [], draws=5)
    assert [s.selections for s in selector.stats("ctx")] == [0, 0] and selector.total_selections == 5
    with pytest.raises(InvalidArgument) as caught:
        selector.restore_history([], [], draws=-1)
    assert caught.value.metadata["field"] == "draws"
