"""An OpenFeature application using the upstream flagd provider, run as its own process by tests.

It must not share a process with the mesh's servers: the provider ships its own compiled flagd
contracts, and two copies of one proto package cannot live in one descriptor pool.

    python -m tests.support.openfeature_app HOST:PORT MODE FLAG KEYS_FILE [--token T] [--watch]

MODE is `rpc` or `in-process`. Prints one JSON object: {"values": {key: bool}} for the keys
(one per line in KEYS_FILE, each with an `email` of `<key>@example.com`); with --watch it then
waits for the provider's configuration-changed event and adds {"changed": [...], "after": bool}
for the first key.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("mode", choices=["rpc", "in-process"])
    parser.add_argument("flag")
    parser.add_argument("keys_file")
    parser.add_argument("--token", default="")
    parser.add_argument("--watch", action="store_true")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    credentials = None
    if args.token:
        # Local credentials (loopback only) let gRPC attach a bearer token without TLS.
        credentials = grpc.composite_channel_credentials(
            grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
            grpc.access_token_call_credentials(args.token),
        )
    changed = threading.Event()
    changed_flags: list[str] = []

    def on_change(details: EventDetails) -> None:
        changed_flags.extend(details.flags_changed or [])
        changed.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    provider = FlagdProvider(
        host=host,
        port=int(port),
        resolver_type=ResolverType.RPC if args.mode == "rpc" else ResolverType.IN_PROCESS,
        cache=CacheType.DISABLED,
        channel_credentials=credentials,
        deadline_ms=5000,
    )
    api.set_provider_and_wait(provider)
    client = api.get_client()
    keys = [line.strip() for line in open(args.keys_file) if line.strip()]  # noqa: SIM115

    def evaluate(key: str) -> bool:
        context = EvaluationContext(targeting_key=key, attributes={"email": f"{key}@example.com"})
        details = client.get_boolean_details(args.flag, False, context)
        if details.error_code is not None:
            raise SystemExit(f"{key}: {details.error_code} {details.error_message}")
        return bool(details.value)

    with ThreadPoolExecutor(8 if args.mode == "rpc" else 1) as pool:
        values = dict(zip(keys, pool.map(evaluate, keys), strict=True))
    result: dict[str, object] = {"values": values}
    if args.watch:
        changed.clear()  # events from connecting are not the change the caller will make
        print(json.dumps({"ready": True}), flush=True)
        before = values[keys[0]]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if changed.wait(max(deadline - time.monotonic(), 0)):
                changed.clear()
                result["after"] = evaluate(keys[0])
                if result["after"] != before:
                    break
        else:
            raise SystemExit("no configuration-changed event that changed the value within 30 s")
        result["changed"] = changed_flags
    print(json.dumps(result), flush=True)
    api.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
