"""The decoy protocols: each module holds one protocol's wire format and its dialogue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from servers.deception.domain import Protocol
from servers.deception.protocols.ftp import converse_ftp
from servers.deception.protocols.http import converse_http
from servers.deception.protocols.mysql import converse_mysql
from servers.deception.protocols.redis import converse_redis
from servers.deception.protocols.smtp import converse_smtp
from servers.deception.protocols.ssh import converse_ssh
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection

Dialogue = Callable[["Connection", Template], Awaitable[None]]
"""Runs one connection: reads through the connection's bounded reads, answers, records."""

DIALOGUES: dict[Protocol, Dialogue] = {
    Protocol.HTTP: converse_http,
    Protocol.SSH: converse_ssh,
    Protocol.MYSQL: converse_mysql,
    Protocol.REDIS: converse_redis,
    Protocol.FTP: converse_ftp,
    Protocol.SMTP: converse_smtp,
}
"""The dialogue of each protocol."""
