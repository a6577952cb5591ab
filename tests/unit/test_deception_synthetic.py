"""Synthetic data: reproducibility, realism of every column, and the quality report that judges it."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servers.deception.distributions import (
    BoundedPareto,
    Categorical,
    Exponential,
    Floored,
    LogNormal,
    ShiftedPoisson,
    TruncatedNormal,
    Uniform,
)
from servers.deception.markov import (
    CORPUS_DIR,
    USERNAME_BOUNDS,
    MarkovNameChain,
    NameBounds,
)
from servers.deception.profiles import TransactionProfile
from servers.deception.quality import (
    BatchQualityAccumulator,
    assess,
    kolmogorov_p_value,
    ks_statistic,
    total_variation,
)
from servers.deception.synthetic import (
    DEFAULT_CHUNK_SIZE,
    GENERATOR_VERSION,
    MAX_CHUNK_SIZE,
    ChunkPlan,
    DatasetKind,
    SyntheticChunk,
    SyntheticDataGenerator,
    plan_chunks,
)
from servers.deception.synthetic_stream import MAX_STREAMED_CHUNK_SIZE, StreamedChunk, stream_batch
from servers.mesh.errors import FailedPrecondition, InvalidArgument

# RFC 5322 dot-atom local part and an RFC 1035 host name with a TLD.
EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}"
)


@pytest.fixture(scope="module")
def generator() -> SyntheticDataGenerator:
    return SyntheticDataGenerator()


def chunk(generator: SyntheticDataGenerator, kind: DatasetKind, seed: int, rows: int, index: int = 0) -> SyntheticChunk:
    return generator.generate_chunk(kind, seed, ChunkPlan(index, index * rows, rows, True))


# --- reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DatasetKind))
def test_same_seed_gives_byte_identical_output(generator: SyntheticDataGenerator, kind: DatasetKind) -> None:
    first = chunk(generator, kind, 1234, 2000)
    # A fresh generator shares no cache with the first, so nothing but the seed can carry over.
    second = chunk(SyntheticDataGenerator(), kind, 1234, 2000)
    assert first.to_json_lines() == second.to_json_lines()
    assert first.content_digest() == second.content_digest()
    assert first.generator_version == GENERATOR_VERSION


@pytest.mark.parametrize("kind", list(DatasetKind))
def test_different_seed_gives_different_output(generator: SyntheticDataGenerator, kind: DatasetKind) -> None:
    assert chunk(generator, kind, 1, 500).content_digest() != chunk(generator, kind, 2, 500).content_digest()


ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = (ROOT, ROOT / "generated")  # this checkout first, as pytest's own path

# SHA-256 of the JSON Lines of 300 rows in chunks of 128, per generator version, kind and seed.
# A change of these is a change of what a seed means: give it a new GENERATOR_VERSION and pin its digests.
PINNED_DIGESTS = {
    "shieldx-synthetic/1 numpy/2.4.6": {
        ("USERS", 1): "b0f6f61ae420a138486a6fcf4c171992f9450b569605850828f47b2ab67c0710",
        ("USERS", 2**63 + 7): "a908bcefc5eb73c01411284d8da11d12bb5f0163a3029b669f5503b00ef0d77b",
        ("TRANSACTIONS", 1): "e94013f879b9ad210f1e6e048d720bca3ff8e9afbf89333b65e0102bdcc32309",
        ("TRANSACTIONS", 2**63 + 7): "6d37038c9336b6ee8545fe9faf1ae1d58d2d806b4a16860596d809ac57c86ebd",
        ("NETWORK_FLOWS", 1): "c9b63989bd7d8aaf375957a55f889f6e08783286808c272b82bacc1a9bc39d68",
        ("NETWORK_FLOWS", 2**63 + 7): "0123c96a6759939838dd7cd5f64b8816de6eaa7af357dfd2165a40f43227b05b",
    },
    # Version 2: usernames and e-mails unique across a batch; transactions and flows unchanged.
    "shieldx-synthetic/2 numpy/2.4.6": {
        ("USERS", 1): "9adbfd3f3c20c687ffc56c620200bddd86a4ba446d028737f1b0b131afbe9fd3",
        ("USERS", 2**63 + 7): "705199236107925792d25d2e156b1b64e6322401d3b9ce9289309fef2bd23838",
        ("TRANSACTIONS", 1): "e94013f879b9ad210f1e6e048d720bca3ff8e9afbf89333b65e0102bdcc32309",
        ("TRANSACTIONS", 2**63 + 7): "6d37038c9336b6ee8545fe9faf1ae1d58d2d806b4a16860596d809ac57c86ebd",
        ("NETWORK_FLOWS", 1): "c9b63989bd7d8aaf375957a55f889f6e08783286808c272b82bacc1a9bc39d68",
        ("NETWORK_FLOWS", 2**63 + 7): "0123c96a6759939838dd7cd5f64b8816de6eaa7af357dfd2165a40f43227b05b",
    },
}

DIGEST_BATCHES = """
import hashlib, json, sys
from servers.deception.synthetic import GENERATOR_VERSION, DatasetKind, SyntheticDataGenerator
generator = SyntheticDataGenerator()
digests = {}
for kind, seed in json.loads(sys.argv[1]):
    lines = b"".join(c.to_json_lines() for c in generator.generate(DatasetKind[kind], seed, 300, chunk_size=128))
    digests[f"{kind} {seed}"] = hashlib.sha256(lines).hexdigest()
print(json.dumps({"version": GENERATOR_VERSION, "digests": digests}))
"""


def digests_in_a_new_process(hash_seed: str) -> dict[str, Any]:
    """The pinned batches' digests as a separate interpreter makes them (its own string-hash salt)."""
    batches = json.dumps([[kind, seed] for kind, seed in PINNED_DIGESTS[GENERATOR_VERSION]])
    run = subprocess.run(
        [sys.executable, "-c", DIGEST_BATCHES, batches],
        env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.pathsep.join(map(str, PYTHONPATH))},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(run.stdout))


def test_seeded_batches_match_their_pinned_digests_in_separate_processes() -> None:
    assert GENERATOR_VERSION in PINNED_DIGESTS, f"pin the digests of {GENERATOR_VERSION!r} (see PINNED_DIGESTS)"
    pinned = {f"{kind} {seed}": digest for (kind, seed), digest in PINNED_DIGESTS[GENERATOR_VERSION].items()}
    first, second = digests_in_a_new_process("1"), digests_in_a_new_process("2")
    assert first["version"] == second["version"] == GENERATOR_VERSION
    assert first["digests"] == second["digests"], "two processes made different data from one seed"
    assert first["digests"] == pinned


def test_a_chunk_regenerates_alone_identical_to_its_place_in_the_batch(generator: SyntheticDataGenerator) -> None:
    batch = list(generator.generate(DatasetKind.TRANSACTIONS, 99, 2500, chunk_size=1000))
    assert [c.row_count for c in batch] == [1000, 1000, 500]
    assert [c.plan.last for c in batch] == [False, False, True]
    alone = generator.generate_chunk(DatasetKind.TRANSACTIONS, 99, batch[2].plan)
    assert alone.content_digest() == batch[2].content_digest()
    # Chunks are not copies of each other, and ids never repeat across them.
    ids = np.concatenate([c.columns["transaction_id"] for c in batch])
    assert len(set(ids.tolist())) == 2500


def test_json_lines_are_one_object_per_row_in_contract_column_order(generator: SyntheticDataGenerator) -> None:
    flows = chunk(generator, DatasetKind.NETWORK_FLOWS, 5, 300)
    lines = flows.to_json_lines().decode("utf-8").splitlines()
    assert len(lines) == 300
    row = json.loads(lines[0])
    assert list(row) == list(flows.columns)
    assert {json.loads(line)["protocol"] for line in lines} <= {"tcp", "udp", "icmp"}


# --- users -------------------------------------------------------------------------------------


def test_users_have_valid_emails_derived_from_their_usernames(generator: SyntheticDataGenerator) -> None:
    users = chunk(generator, DatasetKind.USERS, 7, 3000).columns
    for username, email in zip(users["username"].tolist(), users["email"].tolist(), strict=True):
        assert EMAIL.fullmatch(email), email
        local = email.split("@")[0]
        assert local.startswith(username.replace("_", ".").replace("-", ".")) or local.startswith(username)


def test_usernames_are_novel_distinct_and_within_bounds(generator: SyntheticDataGenerator) -> None:
    corpus = set((CORPUS_DIR / "usernames.txt").read_text(encoding="utf-8").split())
    names = chunk(generator, DatasetKind.USERS, 8, 5000).columns["username"].tolist()
    assert not corpus & set(names)
    assert len(set(names)) == len(names)
    assert all(USERNAME_BOUNDS.min_length <= len(n) <= USERNAME_BOUNDS.max_length for n in names)


@pytest.mark.parametrize("kind", list(DatasetKind))
def test_every_small_count_and_chunk_size_generates_its_rows(
    generator: SyntheticDataGenerator, kind: DatasetKind
) -> None:
    # Every count 1..12 with every chunk size 1..5 (and the default): small chunks once
    # crashed on numpy reductions over an empty selection.
    for count in range(1, 13):
        for chunk_size in range(6):
            chunks = list(generator.generate(kind, 1000 + count, count, chunk_size))
            assert sum(c.row_count for c in chunks) == count
            assert all(len(column) == c.row_count for c in chunks for column in c.columns.values())


def test_usernames_and_emails_are_unique_across_a_batch_of_many_chunks(generator: SyntheticDataGenerator) -> None:
    # 60,000 users in 12 chunks: names were distinct within a chunk but repeated across chunks
    # (4,855 rows shared 1,931 usernames in 50,000 users), and the e-mail variants collided.
    usernames: list[str] = []
    emails: list[str] = []
    for part in generator.generate(DatasetKind.USERS, 77, 60_000, 5_000):
        usernames += part.columns["username"].tolist()
        emails += part.columns["email"].tolist()
    assert len(set(usernames)) == len(usernames) == 60_000
    assert len(set(emails)) == len(emails)
    assert all(EMAIL.fullmatch(email) for email in emails)


def test_no_username_can_be_a_honeytoken_client_id(generator: SyntheticDataGenerator) -> None:
    assert not USERNAME_BOUNDS.pattern or not re.fullmatch(USERNAME_BOUNDS.pattern, "svc-billing-1a2b3c")
    names = chunk(generator, DatasetKind.USERS, 12, 5000).columns["username"].tolist()
    assert not [n for n in names if n.startswith("svc-")]


def test_ages_are_adult_whole_years_around_35(generator: SyntheticDataGenerator) -> None:
    age = chunk(generator, DatasetKind.USERS, 9, 5000).columns["age"]
    assert age.dtype == np.int32
    assert age.min() >= 18 and age.max() <= 90
    assert 35 < age.mean() < 41  # truncation at 18 lifts the mean above 35
    # Normal, not clipped: no pile-up at the lower bound.
    assert (age == 18).mean() < 0.04


def test_api_keys_have_the_token_services_secret_shape(generator: SyntheticDataGenerator) -> None:
    keys = chunk(generator, DatasetKind.USERS, 10, 1000).columns["api_key"].tolist()
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", k) for k in keys)
    assert len(set(keys)) == len(keys)


# --- transactions ------------------------------------------------------------------------------


def test_pareto_amounts_put_about_80_percent_of_volume_in_the_top_20_percent(
    generator: SyntheticDataGenerator,
) -> None:
    amounts = np.sort(chunk(generator, DatasetKind.TRANSACTIONS, 11, 100_000).columns["amount_minor"])[::-1]
    top_share = amounts[: amounts.size // 5].sum() / amounts.sum()
    assert 0.72 < top_share < 0.88, top_share
    assert amounts.min() >= 500


def test_transactions_are_ordered_in_time_and_consistent_in_place(generator: SyntheticDataGenerator) -> None:
    rows = chunk(generator, DatasetKind.TRANSACTIONS, 12, 5000).columns
    assert np.all(np.diff(rows["time_unix_micros"]) >= 0)
    places = set(TransactionProfile().place.labels)
    pairs = {f"{c}/{city}" for c, city in zip(rows["country"].tolist(), rows["city"].tolist(), strict=True)}
    assert pairs <= places
    assert set(rows["currency"].tolist()) == {"USD"}
    assert rows["fraud_score"].min() >= 0.0 and rows["fraud_score"].max() <= 1.0


def test_merchants_are_markov_names_not_corpus_copies(generator: SyntheticDataGenerator) -> None:
    corpus = set((CORPUS_DIR / "merchants.txt").read_text(encoding="utf-8").splitlines())
    merchants = set(chunk(generator, DatasetKind.TRANSACTIONS, 13, 5000).columns["merchant"].tolist())
    assert len(merchants) > 500
    assert not corpus & merchants


def test_transaction_users_are_users_of_the_same_seed() -> None:
    generator = SyntheticDataGenerator(transactions=TransactionProfile(user_population=500))
    users = set(chunk(generator, DatasetKind.USERS, 14, 500).columns["user_id"].tolist())
    payers = set(chunk(generator, DatasetKind.TRANSACTIONS, 14, 2000).columns["user_id"].tolist())
    assert payers <= users
    assert len(payers) > 100


# --- network flows -----------------------------------------------------------------------------


def test_protocol_shares_are_70_25_5(generator: SyntheticDataGenerator) -> None:
    protocol = chunk(generator, DatasetKind.NETWORK_FLOWS, 15, 20_000).columns["protocol"]
    shares = np.bincount(protocol, minlength=4)[1:] / protocol.size
    assert shares == pytest.approx([0.70, 0.25, 0.05], abs=0.015)


def test_icmp_has_no_ports_and_other_protocols_use_common_ones(generator: SyntheticDataGenerator) -> None:
    flows = chunk(generator, DatasetKind.NETWORK_FLOWS, 16, 5000).columns
    icmp = flows["protocol"] == 3
    assert np.all(flows["destination_port"][icmp] == 0) and np.all(flows["source_port"][icmp] == 0)
    assert np.all(flows["source_port"][~icmp] >= 49152)
    tcp_ports = set(flows["destination_port"][flows["protocol"] == 1].tolist())
    assert 443 in tcp_ports and 0 not in tcp_ports
    assert np.all(flows["packets"] >= 1) and np.all(flows["bytes"] >= 1)


def test_every_flow_has_a_private_end_and_public_ends_are_not_reserved(generator: SyntheticDataGenerator) -> None:
    flows = chunk(generator, DatasetKind.NETWORK_FLOWS, 17, 3000).columns
    for source, destination in zip(
        flows["source_address"].tolist(), flows["destination_address"].tolist(), strict=True
    ):
        ends = [ipaddress.IPv4Address(source), ipaddress.IPv4Address(destination)]
        assert any(end.is_private for end in ends)
        assert source != destination
        for end in ends:
            assert end.is_private or end.is_global, end
            assert end.packed[-1] not in (0, 255), end


def test_bytes_and_packets_rise_together(generator: SyntheticDataGenerator) -> None:
    flows = chunk(generator, DatasetKind.NETWORK_FLOWS, 18, 5000).columns
    correlation = np.corrcoef(np.log(flows["bytes"]), flows["packets"])[0, 1]
    assert correlation > 0.5


# --- quality -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DatasetKind))
def test_default_parameters_score_at_least_095_on_every_column(
    generator: SyntheticDataGenerator, kind: DatasetKind
) -> None:
    # A chunk of the default size: total variation over ~100 cities needs thousands of rows
    # before sampling noise drops below 0.05, so smaller chunks can dip on that one column.
    rows = chunk(generator, kind, 20, DEFAULT_CHUNK_SIZE)
    report = assess(rows.columns, generator.targets(kind, 0, DEFAULT_CHUNK_SIZE))
    assert report.overall_score >= 0.95
    worst = report.worst
    assert worst is not None and worst.score >= 0.95, worst
    assert report.row_count == DEFAULT_CHUNK_SIZE


def test_quality_falls_when_data_misses_its_target(generator: SyntheticDataGenerator) -> None:
    rows = dict(chunk(generator, DatasetKind.USERS, 21, 5000).columns)
    rows["age"] = rows["age"] + 10
    rows["preferred_device"] = np.full(5000, "desktop")
    report = assess(rows, generator.targets(DatasetKind.USERS, 0, 5000))
    assert report.column("age").score < 0.8
    assert report.column("age").p_value == pytest.approx(0.0, abs=1e-9)
    assert report.column("preferred_device").score == pytest.approx(0.41, abs=1e-9)


def test_ks_statistic_is_exact_for_continuous_discrete_and_clipped_targets() -> None:
    assert ks_statistic(np.array([0.5]), Uniform(0.0, 1.0)) == pytest.approx(0.5)
    assert ks_statistic(np.array([0.25, 0.75]), Uniform(0.0, 1.0)) == pytest.approx(0.25)
    # A sample sitting on one Poisson atom misses by the atom's complement on one side.
    poisson = ShiftedPoisson(lam=3.0, shift=1)
    below = float(poisson.cdf_left(np.array([4.0]))[0])
    at = float(poisson.cdf(np.array([4.0]))[0])
    assert ks_statistic(np.full(10, 4), poisson) == pytest.approx(max(below, 1.0 - at))
    # Values clipped onto the upper bound of a clipped exponential are that atom, not an error.
    clipped = Exponential(scale=1.0, upper=0.1)
    assert ks_statistic(np.full(100, 0.1), clipped) == pytest.approx(1.0 - math.exp(-0.1))
    assert ks_statistic(np.array([np.nan, 1.0]), Uniform(0.0, 2.0)) == 1.0


def test_floored_targets_match_integer_data_exactly() -> None:
    rng = np.random.default_rng(3)
    target = TruncatedNormal(35.0, 15.0, 18.0, 91.0)
    ages = np.floor(target.sample(rng, 50_000))
    assert ks_statistic(ages, Floored(target)) < 0.01
    # Against the unfloored target the same data is visibly off: flooring shifts mass by up to a year.
    assert ks_statistic(ages, target) > 0.02


def test_total_variation_counts_unknown_categories_fully() -> None:
    target = Categorical(("a", "b"), (1.0, 1.0))
    assert total_variation(np.array(["a", "b"]), target) == 0.0
    assert total_variation(np.array(["a", "c"]), target) == pytest.approx(0.5)
    assert total_variation(np.array([1, 1]), target, values=(1, 2)) == pytest.approx(0.5)


def test_kolmogorov_p_value_matches_the_classic_critical_value() -> None:
    n = 1000
    assert kolmogorov_p_value(1.358 / math.sqrt(n), n) == pytest.approx(0.05, abs=0.005)
    assert kolmogorov_p_value(0.0, n) == 1.0


def test_batch_accumulator_agrees_with_the_exact_report(generator: SyntheticDataGenerator) -> None:
    kind = DatasetKind.TRANSACTIONS
    chunks = list(generator.generate(kind, 22, 6000, chunk_size=2000))
    accumulator = BatchQualityAccumulator(generator.targets(kind, 0, 6000))
    for part in chunks:
        accumulator.add(part.columns)
    merged = {name: np.concatenate([c.columns[name] for c in chunks]) for name in chunks[0].columns}
    exact = assess(merged, generator.targets(kind, 0, 6000))
    batch = accumulator.report()
    assert batch.row_count == 6000
    for approximate, truth in zip(batch.columns, exact.columns, strict=True):
        assert approximate.column == truth.column
        assert approximate.statistic == pytest.approx(truth.statistic, abs=2 / 2048)
    assert batch.overall_score >= 0.95


def test_bounded_pareto_cdf_inverts_its_sampler() -> None:
    target = BoundedPareto(shape=1.16, scale=500.0, upper=1e8)
    draws = target.sample(np.random.default_rng(4), 20_000)
    assert draws.min() >= 500.0 and draws.max() <= 1e8
    assert ks_statistic(draws, target) < 0.015


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "chunk_size", "field"),
    [(0, 0, "count"), (-5, 0, "count"), (10, -1, "chunk_size"), (10, MAX_CHUNK_SIZE + 1, "chunk_size")],
)
def test_bad_batch_shapes_name_the_field(count: int, chunk_size: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_chunks(count, chunk_size)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_seeds_outside_uint64_are_refused(generator: SyntheticDataGenerator, seed: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        generator.generate(DatasetKind.USERS, seed, 10)
    assert caught.value.metadata["field"] == "seed"


def test_default_chunk_size_applies_when_zero() -> None:
    plans = list(plan_chunks(25_000, 0))
    assert [p.row_count for p in plans] == [10_000, 10_000, 5_000]
    assert [p.row_offset for p in plans] == [0, 10_000, 20_000]


# --- Markov chain ------------------------------------------------------------------------------


def test_markov_chain_never_returns_a_training_name() -> None:
    corpus = ["anna", "annabel", "bella", "bellamy", "amy", "belle", "anabel", "mabel"]
    chain = MarkovNameChain.train(corpus, NameBounds(min_length=3, max_length=10))
    names = chain.generate(6, np.random.default_rng(0)).tolist()
    assert len(names) == 6 and not set(names) & set(corpus)
    assert all(3 <= len(n) <= 10 for n in names)


def test_markov_chain_is_deterministic_in_its_generator() -> None:
    chain = MarkovNameChain.from_corpus_file(CORPUS_DIR / "usernames.txt", USERNAME_BOUNDS)
    first = chain.generate(200, np.random.default_rng(77))
    second = chain.generate(200, np.random.default_rng(77))
    assert first.tolist() == second.tolist()


def test_markov_chain_that_can_only_copy_its_corpus_says_so() -> None:
    chain = MarkovNameChain.train(["abc"], NameBounds(min_length=1, max_length=5))
    with pytest.raises(FailedPrecondition) as caught:
        chain.generate(3, np.random.default_rng(0))
    assert caught.value.reason == "CORPUS_EXHAUSTED"


@pytest.mark.parametrize("names", [[], ["", "  "]])
def test_markov_chain_needs_a_corpus(names: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        MarkovNameChain.train(names)
    assert caught.value.metadata["field"] == "corpus"


def test_markov_chain_refuses_negative_counts() -> None:
    chain = MarkovNameChain.from_corpus_file(CORPUS_DIR / "merchants.txt")
    with pytest.raises(InvalidArgument) as caught:
        chain.generate(-1, np.random.default_rng(0))
    assert caught.value.metadata["field"] == "count"
    assert chain.generate(0, np.random.default_rng(0)).size == 0


# --- the stream --------------------------------------------------------------------------------


def stream(generator: SyntheticDataGenerator, kind: DatasetKind, **overrides: int) -> list[StreamedChunk]:
    arguments = {"seed": 40, "count": 4000, "chunk_size": 1500, "honeytoken_count": 0, **overrides}
    return list(stream_batch(generator, kind, batch_id="batch-1", now=datetime(2025, 1, 1, tzinfo=UTC), **arguments))


def test_stream_carries_quality_per_chunk_and_for_the_batch_on_the_last(generator: SyntheticDataGenerator) -> None:
    chunks = stream(generator, DatasetKind.NETWORK_FLOWS)
    assert [c.chunk.row_count for c in chunks] == [1500, 1500, 1000]
    assert [c.batch_quality is not None for c in chunks] == [False, False, True]
    assert all(c.quality.row_count == c.chunk.row_count and c.generation_seconds > 0 for c in chunks)
    batch = chunks[-1].batch_quality
    assert batch is not None and batch.row_count == 4000 and batch.overall_score >= 0.95


def test_stream_plants_honeytokens_in_users_reproducibly(generator: SyntheticDataGenerator) -> None:
    chunks = stream(generator, DatasetKind.USERS, honeytoken_count=5)
    tokens = [t for c in chunks for t in c.honeytokens]
    assert len(tokens) == 5
    for token in tokens:
        part = next(
            c.chunk
            for c in chunks
            if c.chunk.plan.row_offset <= token.row_index < c.chunk.plan.row_offset + c.chunk.row_count
        )
        assert part.columns["api_key"][token.row_index - part.plan.row_offset] == token.secret
        assert token.batch_id == "batch-1"
    retried = [t for c in stream(generator, DatasetKind.USERS, honeytoken_count=5) for t in c.honeytokens]
    assert retried == tokens


@pytest.mark.parametrize(
    ("kind", "overrides", "field"),
    [
        (DatasetKind.TRANSACTIONS, {"honeytoken_count": 1}, "honeytoken_count"),
        (DatasetKind.USERS, {"honeytoken_count": 5000}, "honeytoken_count"),
        (DatasetKind.USERS, {"count": 0}, "count"),
        (DatasetKind.USERS, {"count": -5, "honeytoken_count": 1}, "count"),
        (DatasetKind.USERS, {"seed": -3}, "seed"),
        (DatasetKind.USERS, {"chunk_size": MAX_STREAMED_CHUNK_SIZE + 1}, "chunk_size"),
    ],
)
def test_stream_refuses_bad_requests_before_generating(
    generator: SyntheticDataGenerator, kind: DatasetKind, overrides: dict[str, int], field: str
) -> None:
    arguments = {"seed": 40, "count": 4000, "chunk_size": 1500, "honeytoken_count": 0, **overrides}
    with pytest.raises(InvalidArgument) as caught:
        # No iteration: a servicer must be able to refuse before it starts streaming.
        stream_batch(generator, kind, batch_id="b", now=datetime(2025, 1, 1, tzinfo=UTC), **arguments)
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogNormal(mu=0.0, sigma=0.0),
        lambda: Exponential(scale=-1.0),
        lambda: BoundedPareto(shape=1.16, scale=10.0, upper=5.0),
        lambda: TruncatedNormal(mean=0.0, std=1.0, low=50.0, high=60.0),
        lambda: ShiftedPoisson(lam=math.nan),
        lambda: Uniform(2.0, 1.0),
    ],
)
def test_nonsensical_distributions_are_refused_at_construction(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
