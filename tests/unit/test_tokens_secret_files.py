"""Secret files of the token service: 0600 on disk, refused when others may read them, pruned safely."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servers.tokens import keys
from servers.tokens.secret_files import AtRestCipher, SecretFileError, SigningKeyFiles, secrets_directory

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _files(tmp_path: Path) -> SigningKeyFiles:
    return SigningKeyFiles(secrets_directory(tmp_path))


def test_a_signing_key_round_trips_through_a_private_file(tmp_path: Path) -> None:
    files = _files(tmp_path)
    key = keys.generate_signing_key(NOW)
    assert key.secret_key is not None
    files.write(key.kid, key.secret_key)
    assert files.read(key.kid) == key.secret_key
    assert stat.S_IMODE(files.path(key.kid).stat().st_mode) == 0o600
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    assert files.path(key.kid).read_text().startswith("k4.secret.")
    assert files.kids() == [key.kid]


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    key = keys.generate_signing_key(NOW)
    assert key.secret_key is not None
    files.write(key.kid, key.secret_key)
    os.chmod(files.path(key.kid), 0o644)
    with pytest.raises(SecretFileError):
        files.read(key.kid)


def test_a_file_holding_another_key_is_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    first, second = keys.generate_signing_key(NOW), keys.generate_signing_key(NOW)
    assert first.secret_key is not None and second.secret_key is not None
    files.write(second.kid, second.secret_key)
    os.replace(files.path(second.kid), files.path(first.kid))
    with pytest.raises(SecretFileError):
        files.read(first.kid)
    with pytest.raises(ValueError):
        files.write(first.kid, second.secret_key)


def test_prune_keeps_the_active_key_and_fresh_files_of_keys_not_yet_committed(tmp_path: Path) -> None:
    files = _files(tmp_path)
    active, previous, pending, orphan = (keys.generate_signing_key(NOW) for _ in range(4))
    for key in (active, previous, pending, orphan):
        assert key.secret_key is not None
        files.write(key.kid, key.secret_key)
    os.utime(files.path(orphan.kid), (0, 0))
    destroyed = files.prune(active.kid, known={active.kid, previous.kid})
    assert sorted(destroyed) == sorted([previous.kid, orphan.kid])
    assert sorted(files.kids()) == sorted([active.kid, pending.kid])


def test_the_at_rest_key_is_made_once_and_authenticates(tmp_path: Path) -> None:
    path = secrets_directory(tmp_path) / "at-rest.key"
    cipher = AtRestCipher.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = cipher.encrypt(b"totp secret")
    assert AtRestCipher.open(path).decrypt(sealed) == b"totp secret", "the same key on the next start"
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    assert cipher.decrypt(tampered) is None
    assert cipher.decrypt("not base64!") is None
    assert AtRestCipher(os.urandom(32)).decrypt(sealed) is None
