"""`python -m tests.support.echo_server`: the Echo service as a real server process."""

from __future__ import annotations

import dataclasses
import os

from servers.mesh.config import load_config
from servers.mesh.server import serve
from tests.support.echo import build

if __name__ == "__main__":
    # Any service name gives the right defaults; the port always comes from SHIELDX_PORT here.
    config = load_config(os.environ.get("ECHO_AS", "compliance"))
    serve(dataclasses.replace(config), build)
