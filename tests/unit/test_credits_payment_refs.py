"""Payment references at rest: sealed, opened, searchable by keyed hash, keys rotating."""

from __future__ import annotations

import base64

import pytest

from servers.credits.payment_refs import (
    PaymentReferenceCipher,
    PaymentReferenceConfig,
    PaymentReferenceUnreadable,
    generate_key,
)
from servers.mesh.errors import InvalidArgument

KEY = base64.b64encode(bytes(range(32))).decode()
OLD_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def test_sealed_reference_opens_to_the_plaintext_and_hides_it() -> None:
    cipher = PaymentReferenceCipher(PaymentReferenceConfig(KEY))
    sealed = cipher.seal("pi_3NsKLm2eZvKYlo2C0XJ4 ünïcødé")
    assert "pi_3NsKLm" not in sealed.ciphertext and "pi_3NsKLm" not in sealed.lookup
    assert cipher.open(sealed.ciphertext) == "pi_3NsKLm2eZvKYlo2C0XJ4 ünïcødé"


def test_equal_references_get_different_ciphertexts_but_the_same_lookup() -> None:
    cipher = PaymentReferenceCipher(PaymentReferenceConfig(KEY))
    first, second = cipher.seal("ch_1"), cipher.seal("ch_1")
    assert first.ciphertext != second.ciphertext
    assert first.lookup == second.lookup == cipher.lookups("ch_1")[0]
    assert cipher.seal("ch_2").lookup != first.lookup


def test_lookup_depends_on_the_key() -> None:
    other = PaymentReferenceCipher(PaymentReferenceConfig(generate_key()))
    assert other.seal("ch_1").lookup != PaymentReferenceCipher(PaymentReferenceConfig(KEY)).seal("ch_1").lookup


def test_rotated_keys_still_open_and_find_old_references() -> None:
    old = PaymentReferenceCipher(PaymentReferenceConfig(OLD_KEY)).seal("ch_old")
    rotated = PaymentReferenceCipher(PaymentReferenceConfig(KEY, previous_keys=(OLD_KEY,)))
    assert rotated.open(old.ciphertext) == "ch_old"
    assert old.lookup in rotated.lookups("ch_old")
    assert rotated.seal("ch_new").ciphertext.split(":")[1] != old.ciphertext.split(":")[1]
    with pytest.raises(PaymentReferenceUnreadable):
        PaymentReferenceCipher(PaymentReferenceConfig(KEY)).open(old.ciphertext)


@pytest.mark.parametrize("damage", ["flip", "truncate", "format", "base64"])
def test_tampered_ciphertext_does_not_open(damage: str) -> None:
    cipher = PaymentReferenceCipher(PaymentReferenceConfig(KEY))
    version, key_id, payload = cipher.seal("ch_1").ciphertext.split(":")
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    damaged = {
        "flip": f"{version}:{key_id}:{base64.b64encode(bytes(raw)).decode()}",
        "truncate": f"{version}:{key_id}:{base64.b64encode(bytes(raw[:20])).decode()}",
        "format": f"v9:{key_id}:{payload}",
        "base64": f"{version}:{key_id}:{payload}!!",
    }[damage]
    with pytest.raises(PaymentReferenceUnreadable):
        cipher.open(damaged)


@pytest.mark.parametrize("reference", ["", "x" * 257, "a\nb", "a\x7fb", "\ud800"])
def test_malformed_references_are_invalid_argument(reference: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PaymentReferenceCipher(PaymentReferenceConfig(KEY)).seal(reference)
    assert caught.value.metadata["field"] == "payment_reference"


@pytest.mark.parametrize(
    "config",
    [
        PaymentReferenceConfig("not base64!"),
        PaymentReferenceConfig(base64.b64encode(b"short").decode()),
        PaymentReferenceConfig(KEY, previous_keys=(KEY,)),
    ],
)
def test_bad_key_configuration_is_refused_at_start(config: PaymentReferenceConfig) -> None:
    with pytest.raises(ValueError):
        PaymentReferenceCipher(config)
