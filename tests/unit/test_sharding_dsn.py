"""Shard node DSNs: validation, and redaction that never lets a password through."""

from __future__ import annotations

import pytest

from servers.mesh.errors import InvalidArgument
from servers.sharding.dsn import check_dsn_hosts, dsn_endpoint, redact_dsn, validate_dsn


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
        ("host=db1 sslmode=require password=s3cret", "host=db1 sslmode=require password=***", "db1"),
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
        "host=db1 sslpassword=s3cret",
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


@pytest.mark.parametrize(
    ("dsn", "parameter"),
    [
        ("host=127.0.0.1 dbname=credits sslkey=/etc/shadow", "sslkey"),
        ("host=127.0.0.1 passfile=/root/.pgpass", "passfile"),
        ("postgresql://u@127.0.0.1/credits?sslrootcert=/etc/shadow", "sslrootcert"),
        ("postgresql://u@127.0.0.1/credits?service=prod", "service"),
        ("host=127.0.0.1 options='-c log_statement=all'", "options"),
    ],
)
def test_libpq_parameters_a_shard_does_not_need_are_refused(dsn: str, parameter: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_dsn(dsn, "primary.dsn")
    assert caught.value.reason == "DSN_PARAMETER_NOT_ALLOWED"
    assert caught.value.metadata["field"] == "primary.dsn" and parameter in caught.value.message


LINK_LOCAL_AND_METADATA = [
    "postgresql://u:s3cret@169.254.169.254:5432/credits",
    "postgresql://u@[fe80::1%25eth0]:5432/credits",
    "postgresql://u@[::ffff:169.254.169.254]/credits",
    "postgresql://u@127.0.0.1,169.254.0.7/credits",
    "postgresql://u@127.0.0.1/credits?host=0xa9fea9fe",
    "host=metadata.google.internal. dbname=credits",
    "host=db1 hostaddr=2852039166 dbname=credits",
    "host=Metadata dbname=credits",
    "host=fd00:ec2::254 dbname=credits",
]


@pytest.mark.parametrize("dsn", LINK_LOCAL_AND_METADATA)
def test_link_local_and_metadata_hosts_are_refused_as_written(dsn: str) -> None:
    validate_dsn(dsn)
    with pytest.raises(InvalidArgument) as caught:
        check_dsn_hosts(dsn, "replica.dsn")
    assert caught.value.reason == "DSN_HOST_NOT_ALLOWED" and caught.value.metadata["field"] == "replica.dsn"
    assert "s3cret" not in caught.value.message


def test_hosts_allowed_in_config_and_ordinary_hosts_pass() -> None:
    check_dsn_hosts("postgresql://u@169.254.10.5/credits", allowed=["169.254.10.5"])
    check_dsn_hosts("host=metadata.google.internal dbname=x", allowed=["METADATA.google.internal."])
    for dsn in (
        "postgresql://u:p@db1,db2:5433/credits?sslmode=require",
        "postgresql:///credits?host=/var/run/postgresql",
        "host=127.0.0.1 port=5432 dbname=credits connect_timeout=3",
        "postgresql://u@[::1]:5432/credits",
        "sqlite:///var/lib/shieldx/credits.db",
    ):
        validate_dsn(dsn)
        check_dsn_hosts(dsn)
    with pytest.raises(InvalidArgument):
        check_dsn_hosts("postgresql://u@169.254.10.6/credits", allowed=["169.254.10.5"])
