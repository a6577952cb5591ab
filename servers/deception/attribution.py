"""Attribution: grouping attacker sessions into actors, with a confidence per actor.

Each pair of sessions gets a similarity in [0, 1], the weighted mean of what the two have in
common:

- network: the same /24 (IPv6 /64) scores 1, the same /16 one half;
- timing: overlap of their hour-of-day profiles (circularly smoothed histograms, Bhattacharyya
  coefficient), blended with how alike their inter-arrival times are (log scale);
- credentials and tools: weighted Jaccard of the credentials tried and of the tool tokens
  (client banners and user agents split into product words, version numbers dropped), each
  item weighted by its inverse session frequency so `admin/123456`, which everyone tries,
  says little and an actor's own wordlist says much.

A feature missing from either session (no credentials tried, no banner sent) is left out and
the weights renormalised, rather than counted as a disagreement. Sessions are then merged by
average-linkage agglomerative clustering until no two groups are more similar than the
threshold. A group's confidence is its cohesion (mean similarity inside) times its separation
(one minus its mean similarity to the nearest other group).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from servers.deception.domain import require_finite, source_network
from servers.deception.sessions import Session, SessionEvent
from servers.mesh.errors import FailedPrecondition, InvalidArgument

FloatMatrix = npt.NDArray[np.float64]
HOURS = 24


@dataclass(frozen=True)
class SessionFeatures:
    """What attribution knows about one session."""

    session_id: str
    """The session."""
    source_address: str
    """Its source IP address."""
    event_times: tuple[datetime, ...]
    """When its events happened (UTC)."""
    credentials: frozenset[str] = frozenset()
    """Credentials tried, as `user:secret`."""
    tools: frozenset[str] = frozenset()
    """Tool fingerprints as sent: client banners, user agents, EHLO names."""


@dataclass(frozen=True)
class AttributionWeights:
    """Relative weight of each feature in the similarity."""

    network: float = 0.3
    """Same source network."""
    timing: float = 0.2
    """Alike working hours and pace."""
    credentials: float = 0.25
    """Alike credential lists."""
    tools: float = 0.25
    """Alike tools."""


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of attribution."""

    weights: AttributionWeights = AttributionWeights()
    """Feature weights."""
    similarity_threshold: float = 0.4
    """Groups at least this similar (average linkage) are merged. Sessions of one actor average
    about 0.7 and of different actors below 0.1 on the simulated population of the tests."""
    hour_bandwidth: float = 1.5
    """Standard deviation, in hours, of the circular kernel smoothing hour-of-day profiles."""
    max_sessions: int = 2000
    """Most sessions attributed in one call (the clustering is quadratic in memory)."""


@dataclass(frozen=True)
class ActorGroup:
    """Sessions attributed to one actor."""

    actor_id: str
    """Stable for the same set of sessions."""
    session_ids: tuple[str, ...]
    """Its sessions."""
    confidence: float
    """Cohesion times separation, in [0, 1]."""
    source_networks: tuple[str, ...]
    """Source networks seen, most frequent first."""
    tool_fingerprints: tuple[str, ...]
    """Tool fingerprints seen, most frequent first."""
    usernames: tuple[str, ...]
    """User names tried, most frequent first."""
    active_hours: tuple[int, ...]
    """Busiest hours of the day (UTC), busiest first."""


def session_features(session: Session, events: Iterable[SessionEvent]) -> SessionFeatures:
    """The features of a session from its timeline."""
    times: list[datetime] = []
    credentials: set[str] = set()
    tools: set[str] = set()
    for event in events:
        times.append(event.time)
        if event.interaction is not None:
            credentials.update(f"{c.username}:{c.secret}" for c in event.interaction.credentials)
            if event.interaction.client_banner:
                tools.add(event.interaction.client_banner)
    return SessionFeatures(
        session.session_id,
        session.source_address,
        tuple(sorted(times)) or (session.create_time,),
        frozenset(credentials),
        frozenset(tools),
    )


def tool_tokens(fingerprint: str) -> set[str]:
    """Product words of a banner or user agent: `SSH-2.0-libssh2_1.10.0` -> {ssh, libssh2}."""
    words = re.split(r"[^0-9a-z]+", fingerprint.lower())
    return {w for w in words if len(w) > 1 and not w.isdigit() and not re.fullmatch(r"v?\d+[a-z]?\d*", w)}


def _idf_matrix(item_sets: Sequence[frozenset[str] | set[str]]) -> tuple[FloatMatrix, npt.NDArray[np.bool_]]:
    """Pairwise IDF-weighted Jaccard of item sets, and which pairs both have items."""
    n = len(item_sets)
    vocabulary = sorted(set().union(*item_sets)) if item_sets else []
    present = np.array([bool(s) for s in item_sets])
    both = np.outer(present, present)
    if not vocabulary:
        return np.zeros((n, n)), both
    index = {item: i for i, item in enumerate(vocabulary)}
    incidence = np.zeros((n, len(vocabulary)))
    for row, items in enumerate(item_sets):
        incidence[row, [index[i] for i in items]] = 1.0
    document_frequency = incidence.sum(axis=0)
    idf = np.log((1.0 + n) / (1.0 + document_frequency)) + 1.0
    weighted = incidence * idf
    intersection = weighted @ incidence.T
    totals = weighted.sum(axis=1)
    union = totals[:, None] + totals[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, intersection / union, 0.0)
    return jaccard, both


def _network_matrix(addresses: Sequence[str]) -> FloatMatrix:
    networks = [source_network(a) for a in addresses]
    wide = [n.split(".")[:2] if "." in n else n.split(":")[:3] for n in networks]
    net_ids = np.unique(np.array(networks), return_inverse=True)[1]
    wide_ids = np.unique(np.array([".".join(w) for w in wide]), return_inverse=True)[1]
    same_net = net_ids[:, None] == net_ids[None, :]
    same_wide = wide_ids[:, None] == wide_ids[None, :]
    return np.where(same_net, 1.0, np.where(same_wide, 0.5, 0.0))


def _timing_matrix(times: Sequence[tuple[datetime, ...]], bandwidth: float) -> FloatMatrix:
    n = len(times)
    histograms = np.zeros((n, HOURS))
    for row, stamps in enumerate(times):
        for stamp in stamps:
            histograms[row, stamp.hour] += 1.0
    offsets = np.arange(HOURS)
    distance = np.minimum(offsets, HOURS - offsets).astype(np.float64)
    kernel = np.exp(-0.5 * (distance / bandwidth) ** 2)
    # Circular convolution of each profile with the kernel: the 23h and 0h bins are neighbours.
    circulant = np.stack([np.roll(kernel, shift) for shift in range(HOURS)])
    smoothed = histograms @ circulant
    sums = smoothed.sum(axis=1, keepdims=True)
    profiles = np.divide(smoothed, sums, out=np.full_like(smoothed, 1.0 / HOURS), where=sums > 0)
    roots = np.sqrt(profiles)
    hours = np.clip(roots @ roots.T, 0.0, 1.0)
    pace = np.array([_median_log_gap(t) for t in times])
    has_pace = ~np.isnan(pace)
    both = np.outer(has_pace, has_pace)
    gap_similarity = np.exp(-np.abs(np.nan_to_num(pace)[:, None] - np.nan_to_num(pace)[None, :]))
    timing: FloatMatrix = np.where(both, 0.7 * hours + 0.3 * gap_similarity, hours)
    return timing


def _median_log_gap(stamps: tuple[datetime, ...]) -> float:
    if len(stamps) < 2:
        return math.nan
    gaps = np.diff(np.array([s.timestamp() for s in stamps]))
    return float(np.log10(np.median(gaps) + 0.01))


def similarity_matrix(features: Sequence[SessionFeatures], config: AttributionConfig | None = None) -> FloatMatrix:
    """Pairwise session similarity in [0, 1] (1 on the diagonal)."""
    config = config or AttributionConfig()
    weights = config.weights
    for name in ("network", "timing", "credentials", "tools"):
        require_finite(getattr(weights, name), f"weights.{name}", low=0.0, high=1e6)
    n = len(features)
    if n == 0:
        return np.zeros((0, 0))
    network = _network_matrix([f.source_address for f in features])
    timing = _timing_matrix([f.event_times for f in features], config.hour_bandwidth)
    credentials, both_credentials = _idf_matrix([f.credentials for f in features])
    tokens = [set().union(*(tool_tokens(t) for t in f.tools)) if f.tools else set() for f in features]
    tools, both_tools = _idf_matrix(tokens)
    numerator = weights.network * network + weights.timing * timing
    numerator += np.where(both_credentials, weights.credentials * credentials, 0.0)
    numerator += np.where(both_tools, weights.tools * tools, 0.0)
    denominator = weights.network + weights.timing + both_credentials * weights.credentials
    denominator = denominator + both_tools * weights.tools
    similarity = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    np.fill_diagonal(similarity, 1.0)
    clipped: FloatMatrix = np.clip(similarity, 0.0, 1.0)
    return clipped


def agglomerate(similarity: FloatMatrix, threshold: float) -> npt.NDArray[np.int64]:
    """Average-linkage agglomerative clustering: cluster labels 0..k-1 in order of first member.

    Merges the most similar pair of groups while their average similarity is at least
    `threshold`. Each row keeps its best partner, so a merge costs O(n) plus a rescan of the
    rows whose best partner was merged away.
    """
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise InvalidArgument("similarity", "must be a square matrix")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    linkage = similarity.astype(np.float64, copy=True)
    np.fill_diagonal(linkage, -np.inf)
    sizes = np.ones(n)
    owner = np.arange(n)
    best = np.argmax(linkage, axis=1)
    best_value = linkage[np.arange(n), best]
    while True:
        i = int(np.argmax(best_value))
        if not best_value[i] >= threshold:
            break
        j = int(best[i])
        merged = (linkage[i] * sizes[i] + linkage[j] * sizes[j]) / (sizes[i] + sizes[j])
        merged[[i, j]] = -np.inf
        linkage[i], linkage[:, i] = merged, merged
        linkage[j], linkage[:, j] = -np.inf, -np.inf
        sizes[i] += sizes[j]
        owner[owner == j] = i
        best_value[j] = -np.inf
        stale = np.flatnonzero(((best == i) | (best == j)) & np.isfinite(best_value))
        for row in (i, *stale.tolist()):
            best[row] = int(np.argmax(linkage[row]))
            best_value[row] = linkage[row, best[row]]
        improved = np.flatnonzero(merged > best_value)
        best[improved] = i
        best_value[improved] = merged[improved]
    _, first_seen = np.unique(owner, return_index=True)
    order = {int(owner[k]): rank for rank, k in enumerate(sorted(first_seen.tolist()))}
    return np.array([order[int(o)] for o in owner], dtype=np.int64)


def attribute(features: Sequence[SessionFeatures], config: AttributionConfig | None = None) -> tuple[ActorGroup, ...]:
    """Group sessions into actors, largest group first."""
    config = config or AttributionConfig()
    require_finite(config.similarity_threshold, "similarity_threshold", low=1e-9, high=1.0)
    if len(features) > config.max_sessions:
        raise FailedPrecondition(
            f"{len(features)} sessions are more than the {config.max_sessions} attributed at once; "
            "narrow the time range",
            reason="TOO_MANY_SESSIONS",
        )
    if not features:
        return ()
    similarity = similarity_matrix(features, config)
    labels = agglomerate(similarity, config.similarity_threshold)
    groups = [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)]
    actors = [_actor(features, similarity, members, groups) for members in groups]
    return tuple(sorted(actors, key=lambda a: (-len(a.session_ids), a.actor_id)))


def _actor(
    features: Sequence[SessionFeatures],
    similarity: FloatMatrix,
    members: npt.NDArray[np.intp],
    groups: list[npt.NDArray[np.intp]],
) -> ActorGroup:
    inside = similarity[np.ix_(members, members)]
    size = len(members)
    cohesion = 1.0 if size == 1 else float((inside.sum() - size) / (size * (size - 1)))
    nearest = max(
        (float(similarity[np.ix_(members, other)].mean()) for other in groups if other is not members), default=0.0
    )
    confidence = max(0.0, min(1.0, cohesion * (1.0 - nearest)))
    chosen = [features[int(m)] for m in members]
    session_ids = tuple(sorted(f.session_id for f in chosen))
    hours = np.zeros(HOURS)
    for feature in chosen:
        for stamp in feature.event_times:
            hours[stamp.hour] += 1
    busiest = [int(h) for h in np.argsort(-hours, kind="stable") if hours[h] >= 0.1 * hours.max() and hours[h] > 0]
    return ActorGroup(
        actor_id="actor-" + hashlib.sha256("\n".join(session_ids).encode()).hexdigest()[:12],
        session_ids=session_ids,
        confidence=round(confidence, 4),
        source_networks=_most_common(source_network(f.source_address) for f in chosen),
        tool_fingerprints=_most_common(t for f in chosen for t in f.tools),
        usernames=_most_common(c.split(":", 1)[0] for f in chosen for c in f.credentials if c.split(":", 1)[0]),
        active_hours=tuple(busiest[:6]),
    )


def _most_common(items: Iterable[str], limit: int = 16) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return tuple(sorted(counts, key=lambda k: (-counts[k], k))[:limit])


def adjusted_rand_index(
    labels_true: Sequence[int] | npt.ArrayLike, labels_pred: Sequence[int] | npt.ArrayLike
) -> float:
    """Adjusted Rand index of two clusterings of the same items (Hubert and Arabie, 1985).

    1 for identical partitions (whatever the label names), about 0 for independent ones,
    negative when worse than chance.
    """
    truth = np.asarray(labels_true)
    predicted = np.asarray(labels_pred)
    if truth.ndim != 1 or predicted.ndim != 1:
        raise InvalidArgument("labels_true", "labels must be one-dimensional")
    if truth.shape != predicted.shape:
        raise InvalidArgument("labels_pred", "must label the same number of items as labels_true")
    n = truth.shape[0]
    if n < 2:
        return 1.0
    truth_ids = np.unique(truth, return_inverse=True)[1]
    predicted_ids = np.unique(predicted, return_inverse=True)[1]
    table = np.zeros((truth_ids.max() + 1, predicted_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (truth_ids, predicted_ids), 1)

    def pairs(counts: npt.NDArray[np.int64]) -> float:
        return float((counts * (counts - 1) // 2).sum())

    index = pairs(table)
    rows, columns = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = rows * columns / total
    maximum = (rows + columns) / 2
    if maximum == expected:
        # Both partitions trivial in the same way (one cluster, or all singletons): identical.
        return 1.0
    return float((index - expected) / (maximum - expected))
