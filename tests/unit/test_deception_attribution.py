"""Attribution: simulated sessions of five known actors are grouped back into those actors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from servers.deception.attribution import (
    AttributionConfig,
    AttributionWeights,
    adjusted_rand_index,
    agglomerate,
    attribute,
    session_features,
    similarity_matrix,
    tool_tokens,
)
from servers.deception.domain import Credential, Interaction, Protocol, ReconStage
from servers.deception.sessions import SessionBook
from servers.mesh.errors import FailedPrecondition, InvalidArgument

START = datetime(2024, 5, 1, tzinfo=UTC)
COMMON_CREDENTIALS = ("root:root", "admin:admin", "admin:123456", "root:123456", "user:password", "ubuntu:ubuntu")


@dataclass(frozen=True)
class Actor:
    """A simulated attacker with known habits."""

    network: str
    tool: str
    credentials: tuple[str, ...]
    hour: float
    pace_seconds: float
    protocol: Protocol


ACTORS = (
    Actor("203.0.113", "SSH-2.0-libssh2_1.{v}.0", tuple(f"oracle:oracle{i}" for i in range(10)), 3, 0.3, Protocol.SSH),
    Actor(
        "198.51.100", "python-requests/2.{v}.1", tuple(f"admin:Summer202{i}!" for i in range(10)), 9, 4.0, Protocol.HTTP
    ),
    Actor("192.0.2", "Mozilla/5.0 zgrab/0.{v}", tuple(f"sa:Passw0rd{i}" for i in range(10)), 14, 0.05, Protocol.MYSQL),
    Actor(
        "100.64.12",
        "Hydra v9.{v} (www.thc.org/thc-hydra)",
        tuple(f"ftpuser:ftp{i}{i}" for i in range(10)),
        19,
        0.8,
        Protocol.FTP,
    ),
    Actor("100.70.3", "SSH-2.0-Go", tuple(f"pi:raspberry{i}" for i in range(10)), 23, 12.0, Protocol.SSH),
)


# Two pairs of actors working from one network each (a shared VPS range, a campus NAT): the
# network cannot tell them apart, what they do must.
SHARING = (
    *ACTORS[:3],
    dataclasses.replace(ACTORS[3], network=ACTORS[1].network),
    dataclasses.replace(ACTORS[4], network=ACTORS[0].network),
)
SEEDS = range(1, 11)


def simulate(
    seed: int, sessions_per_actor: int = 14, actors: tuple[Actor, ...] = ACTORS
) -> tuple[SessionBook, dict[str, int]]:
    """Sessions of the five actors with noise: proxy hops, tool versions, shared wordlists, jittered hours."""
    rng = np.random.default_rng(seed)
    book = SessionBook()
    truth: dict[str, int] = {}
    for label, actor in enumerate(actors):
        days = rng.choice(60, size=sessions_per_actor, replace=False)
        for day in days:
            if rng.random() < 0.15:  # a hop through somebody else's network
                address = f"45.{rng.integers(1, 255)}.{rng.integers(0, 255)}.{rng.integers(1, 255)}"
            else:
                address = f"{actor.network}.{rng.integers(1, 255)}"
            hour = (actor.hour + rng.normal(0, 1.2)) % 24
            moment = START + timedelta(days=int(day), hours=float(hour))
            banner = actor.tool.format(v=rng.integers(1, 12)) if rng.random() > 0.1 else ""
            tried = list(rng.choice(actor.credentials, size=rng.integers(3, 7), replace=False))
            tried += list(rng.choice(COMMON_CREDENTIALS, size=rng.integers(0, 3), replace=False))
            if rng.random() < 0.1:
                tried = []
            events = int(rng.integers(2, 8))
            session_id = ""
            for _ in range(events):
                credentials = tuple(Credential(*c.split(":", 1)) for c in tried)
                interaction = Interaction(
                    interaction_id=f"i{rng.integers(1 << 40)}",
                    decoy_id=f"{actor.protocol.label}-1",
                    protocol=actor.protocol,
                    source_address=address,
                    source_port=int(rng.integers(30000, 60000)),
                    start_time=moment,
                    end_time=moment + timedelta(seconds=1),
                    bytes_received=200,
                    received_sample=b"",
                    stage=ReconStage.LOGIN_ATTEMPT if credentials else ReconStage.BANNER_GRAB,
                    credentials=credentials,
                    client_banner=banner,
                )
                session_id = book.record_interaction(interaction).session_id
                moment += timedelta(seconds=float(rng.exponential(actor.pace_seconds)))
            truth[session_id] = label
    return book, truth


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sessions_of_five_known_actors_are_attributed_with_ari_at_least_0_8(seed: int) -> None:
    book, truth = simulate(seed)
    sessions = book.all_sessions()
    assert len(sessions) == len(truth) == 5 * 14

    features = [session_features(s, book.events(s.session_id)) for s in sessions]
    actors = attribute(features)

    predicted = {sid: k for k, actor in enumerate(actors) for sid in actor.session_ids}
    ids = sorted(truth)
    ari = adjusted_rand_index([truth[i] for i in ids], [predicted[i] for i in ids])
    print(f"seed {seed}: {len(actors)} actors, ARI {ari:.3f}")
    assert ari >= 0.8
    largest = actors[:5]
    assert all(0.0 < a.confidence <= 1.0 for a in actors)
    assert {a.source_networks[0] for a in largest} == {f"{x.network}.0/24" for x in ACTORS}


def attribution_ari(seed: int, actors: tuple[Actor, ...], weights: AttributionWeights | None = None) -> float:
    """ARI of attributing one simulated population against the truth."""
    book, truth = simulate(seed, actors=actors)
    sessions = book.all_sessions()
    features = [session_features(s, book.events(s.session_id)) for s in sessions]
    groups = attribute(features, AttributionConfig(weights=weights or AttributionWeights()))
    predicted = {sid: k for k, actor in enumerate(groups) for sid in actor.session_ids}
    ids = sorted(truth)
    return adjusted_rand_index([truth[i] for i in ids], [predicted[i] for i in ids])


def test_attribution_holds_over_ten_seeds_and_with_actors_sharing_a_network() -> None:
    distinct = [attribution_ari(seed, ACTORS) for seed in SEEDS]
    sharing = [attribution_ari(seed, SHARING) for seed in SEEDS]
    print("distinct networks:", " ".join(f"{a:.2f}" for a in distinct))
    print("shared networks:  ", " ".join(f"{a:.2f}" for a in sharing))
    assert min(distinct) >= 0.9 and np.mean(distinct) >= 0.95
    assert min(sharing) >= 0.7 and np.mean(sharing) >= 0.75


@pytest.mark.parametrize("ignored", [("credentials",), ("tools",), ("timing",), ("credentials", "tools")], ids="+".join)
def test_each_behavioural_feature_matters_when_networks_are_shared(ignored: tuple[str, ...]) -> None:
    # Ablation over ten seeds: without the feature, actors sharing a network run together.
    full = np.mean([attribution_ari(seed, SHARING) for seed in SEEDS])
    weights = dataclasses.replace(AttributionWeights(), **dict.fromkeys(ignored, 0.0))
    without = np.mean([attribution_ari(seed, SHARING, weights) for seed in SEEDS])
    print(f"ARI over seeds {SEEDS.start}-{SEEDS.stop - 1}: all features {full:.3f}, without {ignored} {without:.3f}")
    assert without <= full - 0.1


def test_actor_profiles_describe_what_the_actor_did() -> None:
    book, _ = simulate(4)
    features = [session_features(s, book.events(s.session_id)) for s in book.all_sessions()]
    actors = attribute(features)
    night_owl = next(a for a in actors if a.source_networks[0] == "100.70.3.0/24")

    assert "pi" in night_owl.usernames
    assert any(h in (22, 23, 0) for h in night_owl.active_hours[:2])
    assert night_owl.tool_fingerprints == ("SSH-2.0-Go",)
    assert attribute(features) == actors  # same sessions, same ids and groups


def test_unrelated_sessions_are_less_similar_than_one_actors_sessions() -> None:
    book, truth = simulate(5)
    sessions = book.all_sessions()
    features = [session_features(s, book.events(s.session_id)) for s in sessions]
    similarity = similarity_matrix(features)
    labels = np.array([truth[s.session_id] for s in sessions])
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)

    assert similarity[same & off_diagonal].mean() > 0.6
    assert similarity[~same].mean() < 0.15
    assert np.allclose(similarity, similarity.T) and np.all(np.diag(similarity) == 1.0)


def test_tool_tokens_drop_versions_but_keep_product_words() -> None:
    assert tool_tokens("SSH-2.0-libssh2_1.10.0") == {"ssh", "libssh2"}
    assert tool_tokens("python-requests/2.31.0") == {"python", "requests"}
    assert tool_tokens("Hydra v9.5 (www.thc.org/thc-hydra)") == {"hydra", "www", "thc", "org"}


def test_agglomeration_merges_blocks_above_the_threshold_only() -> None:
    similarity = np.array(
        [
            [1.0, 0.9, 0.8, 0.1, 0.0],
            [0.9, 1.0, 0.7, 0.2, 0.1],
            [0.8, 0.7, 1.0, 0.1, 0.1],
            [0.1, 0.2, 0.1, 1.0, 0.6],
            [0.0, 0.1, 0.1, 0.6, 1.0],
        ]
    )
    assert agglomerate(similarity, 0.5).tolist() == [0, 0, 0, 1, 1]
    assert agglomerate(similarity, 0.65).tolist() == [0, 0, 0, 1, 2]
    assert agglomerate(similarity, 0.95).tolist() == [0, 1, 2, 3, 4]
    assert agglomerate(np.zeros((0, 0)), 0.5).tolist() == []


@pytest.mark.parametrize(
    ("truth", "predicted", "expected"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),
        ([0, 0, 1, 2], [0, 0, 1, 1], 0.5714285714285714),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2], 0.8 / 3.3),
        ([5, 5, 5], [9, 9, 9], 1.0),
    ],
)
def test_adjusted_rand_index_matches_known_values(truth: list[int], predicted: list[int], expected: float) -> None:
    assert adjusted_rand_index(truth, predicted) == pytest.approx(expected)
    assert adjusted_rand_index(predicted, truth) == pytest.approx(expected)


def test_adjusted_rand_index_of_random_labels_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    scores = [adjusted_rand_index(rng.integers(0, 5, 200), rng.integers(0, 5, 200)) for _ in range(20)]
    assert abs(float(np.mean(scores))) < 0.02


def test_bad_inputs_are_invalid_arguments_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as mismatch:
        adjusted_rand_index([0, 1, 1], [0, 1])
    assert mismatch.value.metadata["field"] == "labels_pred"

    book, _ = simulate(6, sessions_per_actor=2)
    features = [session_features(s, book.events(s.session_id)) for s in book.all_sessions()]
    for threshold in (float("nan"), 0.0, 1.5):
        with pytest.raises(InvalidArgument) as bad:
            attribute(features, AttributionConfig(similarity_threshold=threshold))
        assert bad.value.metadata["field"] == "similarity_threshold"
    with pytest.raises(FailedPrecondition) as too_many:
        attribute(features, AttributionConfig(max_sessions=3))
    assert too_many.value.reason == "TOO_MANY_SESSIONS"
    assert attribute([]) == ()
