"""Classifying what a client did to a decoy into a reconnaissance stage.

Exploit signatures are matched on the raw bytes and on their URL-decoded form, so `%2e%2e/`
is as much a path traversal as `../`. Each signature names an indicator that explains the
classification in the timeline.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from servers.deception.domain import Credential, ReconStage


@dataclass(frozen=True)
class ExploitSignature:
    """A byte pattern that only an exploit attempt sends."""

    indicator: str
    """Name shown in the interaction's indicators, e.g. `path_traversal`."""
    pattern: re.Pattern[bytes]
    """Case-insensitive pattern matched against the received bytes."""


def _sig(indicator: str, pattern: bytes) -> ExploitSignature:
    return ExploitSignature(indicator, re.compile(pattern, re.IGNORECASE | re.DOTALL))


EXPLOIT_SIGNATURES: tuple[ExploitSignature, ...] = (
    _sig("path_traversal", rb"(?:\.\.[/\\]){1,}|/etc/(?:passwd|shadow)\b|boot\.ini|win\.ini"),
    _sig(
        "sql_injection",
        rb"'\s*(?:or|and)\s+'?\d+'?\s*=\s*'?\d+|\bunion\b[\s/*]+(?:all\s+)?select\b"
        rb"|;\s*drop\s+table\b|\bsleep\s*\(\s*\d+\s*\)|\bbenchmark\s*\(|'\s*--|xp_cmdshell",
    ),
    _sig("shellshock", rb"\(\)\s*\{\s*:?\s*;?\s*\}\s*;"),
    _sig("log4shell", rb"\$\{\s*(?:jndi|\$\{[^}]*\}ndi|lower:j)"),
    _sig(
        "command_injection",
        rb"(?:;|\||&&|`|\$\()\s*(?:wget|curl|nc|bash|sh|python[0-9.]*|perl|chmod|busybox)\b"
        rb"|/bin/(?:ba)?sh\b|cmd\.exe|powershell",
    ),
    _sig("php_code_injection", rb"<\?php|php://(?:input|filter)|allow_url_include|auto_prepend_file"),
    _sig("spring4shell", rb"class\.module\.classLoader"),
    _sig("struts_ognl", rb"%\{\s*\(?#|\$\{\s*#context|ognl"),
    _sig(
        "webshell_probe",
        rb"/(?:wp-admin/admin-ajax|phpunit/src/Util/PHP/eval-stdin|cgi-bin/\S*\.(?:sh|cgi)"
        rb"|\.env\b|\.git/config|actuator/(?:env|heapdump)|HNAP1|boaform|setup\.cgi)",
    ),
    _sig(
        "redis_rce",
        rb"config\s+set\s+(?:dir|dbfilename)|\bslaveof\b|\breplicaof\b|module\s+load"
        rb"|eval\s+[^\r\n]*(?:os\.execute|io\.popen|package\.loadlib)",
    ),
    _sig("exim_rce", rb"\$\{run\{"),
    _sig("proftpd_mod_copy", rb"\bsite\s+cp(?:fr|to)\b"),
    _sig("vsftpd_backdoor", rb"user\s+\S*:\)"),
    _sig("mysql_file_access", rb"load_file\s*\(|into\s+(?:out|dump)file|load\s+data\s+local"),
)


def _variants(data: bytes) -> Iterable[bytes]:
    """The bytes as received, then URL-decoded once and twice (double encoding evades naive filters)."""
    yield data
    once = urllib.parse.unquote_to_bytes(data.replace(b"+", b" "))
    if once != data:
        yield once
        twice = urllib.parse.unquote_to_bytes(once)
        if twice != once:
            yield twice


def exploit_indicators(data: bytes) -> tuple[str, ...]:
    """Indicators of every exploit signature found in `data`, in signature order."""
    if not data:
        return ()
    found: list[str] = []
    for variant in _variants(data):
        for signature in EXPLOIT_SIGNATURES:
            if signature.indicator not in found and signature.pattern.search(variant):
                found.append(signature.indicator)
    order = [s.indicator for s in EXPLOIT_SIGNATURES]
    return tuple(sorted(found, key=order.index))


def classify_stage(bytes_received: int, credentials: tuple[Credential, ...], indicators: tuple[str, ...]) -> ReconStage:
    """The furthest stage a connection reached.

    A client that sent nothing is a scan even if it may have read the banner: TCP does not
    tell a server whether its bytes were read, so sending is the only evidence of interest.
    """
    if indicators:
        return ReconStage.EXPLOIT_ATTEMPT
    if credentials:
        return ReconStage.LOGIN_ATTEMPT
    if bytes_received > 0:
        return ReconStage.BANNER_GRAB
    return ReconStage.SCAN
