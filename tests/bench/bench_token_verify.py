"""Local token verification rate per core: what the auth interceptor pays per request.

Times, in one process and one run, on one thread:

- baseline: a bare libsodium Ed25519 verification (pynacl `VerifyKey.verify`) of the exact
  bytes a token signs (the PAE of header, payload, footer and implicit assertion);
- format: `paseto.verify` (strict base64url, PAE, Ed25519), no claims;
- cold: `TokenVerifier.verify` with its cache off: footer and kid, Ed25519, JSON claims,
  RFC 3339 times, then the expiry, not-before, audience, issuer and revocation checks;
- warm: `TokenVerifier.verify` on tokens it has seen: a cache lookup plus the same checks
  (a pool of distinct tokens, larger than one but smaller than the cache, so lookups are
  realistic rather than one hot key);
- warm, revocation set of 10 000 jti: the same with a populated revocation set.

Rates are reported against CPU time of this process (`time.process_time`), which is per
core regardless of other load, and against wall time. Each phase runs `--repeat` times and
the best is kept.

Run: `.venv/bin/python tests/bench/bench_token_verify.py [--seconds 1.0] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "generated")]

import nacl.signing  # noqa: E402

from servers.mesh import paseto  # noqa: E402
from servers.mesh.claims import TokenSigner  # noqa: E402
from servers.mesh.verifier import TokenVerifier, TrustedKey  # noqa: E402

NOW = datetime(2030, 1, 1, tzinfo=UTC)
AUDIENCE = "shieldx.credits"
ISSUER = "shieldx-tokens"
POOL = 256


def _clock() -> float:
    return NOW.timestamp()


def measure(name: str, operation: Callable[[int], object], seconds: float, repeat: int) -> tuple[float, float]:
    """Best (CPU-time rate, wall-time rate) of `operation` over `repeat` runs of about `seconds` each."""
    batch = 1
    # Grow the batch until one batch takes about a tenth of the run, so loop overhead is negligible.
    while True:
        started = time.perf_counter()
        for i in range(batch):
            operation(i)
        if time.perf_counter() - started > seconds / 10 or batch >= 1 << 22:
            break
        batch *= 2
    best_cpu = best_wall = 0.0
    for _ in range(repeat):
        done = 0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall_start < seconds:
            for i in range(batch):
                operation(i)
            done += batch
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        best_cpu = max(best_cpu, done / cpu if cpu > 0 else 0.0)
        best_wall = max(best_wall, done / wall)
    print(
        f"{name:<44} {best_cpu:>12,.0f}/s cpu  {1e6 / best_cpu:>8.2f} µs  {best_wall:>12,.0f}/s wall",
        flush=True,
    )
    return best_cpu, best_wall


def main() -> None:
    """Run every phase and print the rates and the ratios that matter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per phase (best kept)")
    arguments = parser.parse_args()

    signing_key = nacl.signing.SigningKey(bytes(range(32)))
    signer = TokenSigner(signing_key, issuer=ISSUER, clock=_clock)
    tokens = [
        signer.mint(
            audience=AUDIENCE,
            ttl=timedelta(hours=1),
            subject=f"workload:bench-{i}",
            scopes=["credits.read", "credits.write", "tokens.watch"],
            client_id=f"bench-{i}",
        ).token
        for i in range(POOL)
    ]
    keys = [TrustedKey(signing_key.verify_key)]
    public_key = signing_key.verify_key
    sample = tokens[0]
    payload, footer = paseto.verify(sample, public_key)
    signed = paseto.pae(paseto.HEADER.encode(), payload, footer, b"")
    signature = paseto.b64url_decode(sample[len(paseto.HEADER) :].split(".")[0])[-paseto.SIGNATURE_SIZE :]
    print(f"token: {len(sample)} characters, payload {len(payload)} bytes, footer {len(footer)} bytes")
    print(f"python {sys.version.split()[0]}, pynacl {nacl.__version__}; one thread\n")

    cold = TokenVerifier(audience=AUDIENCE, keys=keys, issuer=ISSUER, clock=_clock, cache_size=0)
    warm = TokenVerifier(audience=AUDIENCE, keys=keys, issuer=ISSUER, clock=_clock)
    revoked = TokenVerifier(audience=AUDIENCE, keys=keys, issuer=ISSUER, clock=_clock)
    for i in range(10_000):
        revoked.revoke(f"revoked-{i}", NOW + timedelta(hours=1))
    for token in tokens:
        warm.verify(token)
        revoked.verify(token)

    mask = POOL - 1
    baseline, _ = measure(
        "baseline: nacl Ed25519 verify",
        lambda i: public_key.verify(signed, signature),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "format: paseto.verify",
        lambda i: paseto.verify(tokens[i & mask], public_key),
        arguments.seconds,
        arguments.repeat,
    )
    cold_rate, _ = measure(
        "cold: TokenVerifier.verify, no cache",
        lambda i: cold.verify(tokens[i & mask]),
        arguments.seconds,
        arguments.repeat,
    )
    warm_rate, _ = measure(
        "warm: TokenVerifier.verify, cached",
        lambda i: warm.verify(tokens[i & mask]),
        arguments.seconds,
        arguments.repeat,
    )
    measure(
        "warm, 10 000 revocations held",
        lambda i: revoked.verify(tokens[i & mask]),
        arguments.seconds,
        arguments.repeat,
    )
    print(
        f"\ncold / baseline: {cold_rate / baseline:.2f}   warm / cold: {warm_rate / cold_rate:.1f}x   "
        f"(per core, CPU time)"
    )


if __name__ == "__main__":
    main()
