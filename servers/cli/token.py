"""`shieldx token`: print a bearer token of the local mesh, for `buf curl`, `grpcurl` and scripts."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from clients.channel import open_channel
from clients.credentials import CREDENTIALS_FILE, CredentialsFileTokenSource
from clients.errors import ShieldxError


def register(commands: Any) -> None:
    """Add `token`."""
    token = commands.add_parser(
        "token",
        help="print a bearer token for a principal of `shieldx up` (e.g. for buf curl -H 'Authorization: Bearer ...')",
    )
    token.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")
    token.set_defaults(run=_token, parser=token)


def _token(args: argparse.Namespace) -> int:
    source = CredentialsFileTokenSource(args.data_dir / CREDENTIALS_FILE, args.principal, open_channel)
    try:
        print(asyncio.run(source.token()))
    except ShieldxError as error:
        print(f"{error.code.name}: {error.message}", file=sys.stderr)
        return 1
    return 0
