"""Shard node DSNs: validation, and redaction that never lets a password through."""

from __future__ import annotations

import pytest

from servers.mesh.errors import InvalidArgument
from servers.sharding.dsn import dsn_endpoint, redact_dsn, validate_dsn


@pytest.mark.parametrize(
    ("dsn", "redacted", "endpoint"),
    [
        (
            "postgresql://credits:s3cret@db1:5432/credits?sslmode=require",
            "postgresql://credits:***@db1:5432/credits?sslmode=require",
            "db1:5432/credits",
        ),
        (
            "postgresql://credits@db1,db2:5433/credits?password=s3cret&target_session_attrs=read-write",
            "postgresql://credits@db1,db2:5433/credits?password=***&target_session_attrs=read-write",
            "db1,db2:5433/credits",
        ),
        (
            "postgresql:///credits?host=/var/run/postgresql&password=s3cret",
            "postgresql:///credits?host=/var/run/postgresql&password=***",
            "/var/run/postgresql/credits",
        ),
        (
            "host=db1 port=5432 dbname=credits user=credits password='s3cret with \\' quote'",
            "host=db1 port=5432 dbname=credits user=credits password=***",
            "db1:5432/credits",
        ),
        ("host=db1 sslpassword=s3cret", "host=db1 sslpassword=***", "db1"),
        (
            "sqlite:///var/lib/shieldx/credits.db",
            "sqlite:///var/lib/shieldx/credits.db",
            "sqlite:/var/lib/shieldx/credits.db",
        ),
    ],
)
def test_valid_dsns_are_redacted_and_summarised(dsn: str, redacted: str, endpoint: str) -> None:
    validate_dsn(dsn)
    assert redact_dsn(dsn) == redacted
    assert dsn_endpoint(dsn) == endpoint
    assert "s3cret" not in redact_dsn(dsn)
    assert "s3cret" not in dsn_endpoint(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://credits:s3/cret@db1/credits",  # raw '/' in the password
        "postgresql://credits:s3@cret@db1/credits",  # raw '@' in the password
        "host=db1 password='s3cret",  # unterminated quote
        "host=db1 password = s3cret port=x'",
        "postgresql://credits:s3cret@db1/credits?password=s3cret&&&",
        "not a dsn at all password=s3cret",
    ],
)
def test_redaction_hides_the_password_even_in_malformed_dsns(dsn: str) -> None:
    assert "s3cret" not in redact_dsn(dsn)
    assert "cret" not in redact_dsn(dsn)
    assert "cret" not in dsn_endpoint(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        "   ",
        "mysql://u:s3cret@db1/credits",
        "postgresql://u:s3cret@db1:99999/credits",
        "postgresql://db1:http/credits",
        "postgresql:///credits",
        "host=db1 port=0 password=s3cret",
        "dbname=credits password=s3cret",
        "host=db1 what",
        "sqlite:",
        "host=db1\ndbname=x",
        "host=" + "a" * 5000,
    ],
)
def test_unusable_dsns_are_refused_without_echoing_them(dsn: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_dsn(dsn, "primary.dsn")
    assert caught.value.metadata["field"] == "primary.dsn"
    assert "s3cret" not in caught.value.message
