"""SMTP decoy: Postfix's banner, EHLO capabilities, AUTH PLAIN/LOGIN that always fail, no relaying."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from servers.deception.fingerprints import SmtpFingerprint
from servers.deception.protocols.framing import crlf
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


async def converse_smtp(conn: Connection, template: Template) -> None:
    """Greet, answer EHLO with the capability list, deny AUTH and relaying like Postfix."""
    fp = template.fingerprint_as(SmtpFingerprint)
    if not await conn.send(crlf(fp.banner)):
        return
    state = {"helo": False, "mail": False}
    errors = 0
    while True:
        raw = await conn.read_line(limit=2048)
        if raw is None:
            return
        text = raw.decode("utf-8", "replace")
        verb, _, argument = text.strip().partition(" ")
        verb = verb.upper()
        if not conn.note_command("AUTH ****" if verb == "AUTH" else text[:128]):
            return
        reply, close = await _smtp_reply(conn, fp, verb, argument.strip(), state)
        if reply.startswith(("5", "4")):
            errors += 1
            if errors >= 20:
                reply, close = f"421 4.7.0 {fp.hostname} Error: too many errors", True
        if not await conn.send(crlf(reply)) or close:
            return


async def _smtp_reply(
    conn: Connection, fp: SmtpFingerprint, verb: str, argument: str, state: dict[str, bool]
) -> tuple[str, bool]:
    if verb == "EHLO":
        conn.note_client_banner(argument)
        state["helo"] = True
        return "\r\n".join(
            [f"250-{fp.hostname}", *(f"250-{c}" for c in fp.ehlo_capabilities[:-1]), f"250 {fp.ehlo_capabilities[-1]}"]
        ), False
    if verb == "HELO":
        conn.note_client_banner(argument)
        state["helo"] = True
        return f"250 {fp.hostname}", False
    if verb == "QUIT":
        return "221 2.0.0 Bye", True
    if verb == "NOOP":
        return "250 2.0.0 Ok", False
    if verb == "RSET":
        state["mail"] = False
        return "250 2.0.0 Ok", False
    if verb == "STARTTLS":
        return "454 4.7.0 TLS not available due to local problem", False
    if verb == "VRFY":
        if "VRFY" in fp.ehlo_capabilities:
            return f"252 2.0.0 {argument[:64]}", False
        return "502 5.5.1 VRFY command is disabled", False
    if verb in ("AUTH", "MAIL") and not state["helo"]:
        return "503 5.5.1 Error: send HELO/EHLO first", False
    if verb == "AUTH":
        return await _smtp_auth(conn, argument), False
    if verb == "MAIL":
        state["mail"] = True
        return "250 2.1.0 Ok", False
    if verb == "RCPT":
        if not state["mail"]:
            return "503 5.5.1 Error: need MAIL command", False
        recipient = argument.partition(":")[2].strip()[:128]
        return f"554 5.7.1 {recipient}: Relay access denied", False
    if verb == "DATA":
        return (
            "554 5.5.1 Error: no valid recipients" if state["mail"] else "503 5.5.1 Error: need RCPT command"
        ), False
    return "502 5.5.2 Error: command not recognized", False


async def _smtp_auth(conn: Connection, argument: str) -> str:
    mechanism, _, initial = argument.partition(" ")
    mechanism = mechanism.upper()
    failure = "535 5.7.8 Error: authentication failed: authentication failure"
    if mechanism == "PLAIN":
        response = initial or await _smtp_challenge(conn, "")
        if response is None:
            return "501 5.7.0 Authentication aborted"
        decoded = _b64(response)
        if decoded is None:
            return "501 5.5.2 Cannot decode response"
        parts = decoded.split("\x00")
        if len(parts) == 3:
            conn.note_credential(parts[1], parts[2])
        return failure
    if mechanism == "LOGIN":
        user_b64 = initial or await _smtp_challenge(conn, "VXNlcm5hbWU6")
        user = _b64(user_b64) if user_b64 is not None else None
        if user is None:
            return "501 5.7.0 Authentication aborted"
        password_b64 = await _smtp_challenge(conn, "UGFzc3dvcmQ6")
        password = _b64(password_b64) if password_b64 is not None else None
        if password is None:
            return "501 5.7.0 Authentication aborted"
        conn.note_credential(user, password)
        return failure
    return "535 5.7.8 Error: authentication failed: Invalid authentication mechanism"


async def _smtp_challenge(conn: Connection, challenge: str) -> str | None:
    """Send a 334 challenge; the client's answer, or None if it cancelled ("*") or left."""
    if not await conn.send(crlf(f"334 {challenge}")):
        return None
    raw = await conn.read_line(limit=2048)
    if raw is None or raw.strip() == b"*":
        return None
    return raw.decode("ascii", "replace").strip()


def _b64(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
