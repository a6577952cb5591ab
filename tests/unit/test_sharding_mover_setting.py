"""`sharding.account_mover`: the sharding server loads its account mover by name, and refuses a bad name."""

from __future__ import annotations

from pathlib import Path

import pytest

from servers.credits.moves import CreditsAccountMover
from servers.mesh.config import ConfigError, load_config
from servers.mesh.server import Runtime
from servers.sharding.service import ClosableMover, load_mover


def runtime(tmp_path: Path) -> Runtime:
    config = load_config("sharding", environ={})
    config.data_dir = str(tmp_path)
    return Runtime(config)


def test_the_credits_mover_is_loaded_by_name(tmp_path: Path) -> None:
    mover = load_mover("servers.credits.moves:create_mover", runtime(tmp_path))
    assert isinstance(mover, CreditsAccountMover)
    assert isinstance(mover, ClosableMover), "its shard pools are closed at shutdown"


@pytest.mark.parametrize(
    "name",
    ["servers.credits.moves", ":create_mover", "servers.credits.nowhere:create_mover", "servers.credits.moves:nothing"],
)
def test_a_mover_that_cannot_be_loaded_is_a_config_error_naming_the_setting(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"sharding\.account_mover"):
        load_mover(name, runtime(tmp_path))
