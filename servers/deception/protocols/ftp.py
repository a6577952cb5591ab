"""FTP decoy: the daemon's greeting, then every login refused in vsftpd's or ProFTPD's words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from servers.deception.fingerprints import FtpFingerprint
from servers.deception.protocols.framing import crlf
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


async def converse_ftp(conn: Connection, template: Template) -> None:
    """Greet, then refuse every login with the daemon's own replies."""
    fp = template.fingerprint_as(FtpFingerprint)
    if not await conn.send(crlf(fp.greeting.format(local_address=_ftp_address(conn)))):
        return
    user: str | None = None
    failures = 0
    while True:
        raw = await conn.read_line(limit=512)
        if raw is None:
            return
        text = raw.decode("utf-8", "replace")
        verb, _, argument = text.strip().partition(" ")
        verb = verb.upper()
        if not conn.note_command("PASS ****" if verb == "PASS" else text[:128]):
            return
        reply, close = fp.login_required_reply, False
        if verb == "USER":
            user, reply = argument, fp.user_reply.format(user=argument[:64])
        elif verb == "PASS":
            if user is None:
                reply = fp.user_first_reply
            else:
                conn.note_credential(user, argument)
                user, failures = None, failures + 1
                reply, close = fp.login_failed_reply, failures >= fp.max_login_failures
        elif verb == "SYST":
            reply = fp.system_reply
        elif verb == "QUIT":
            reply, close = fp.goodbye_reply, True
        elif verb == "FEAT":
            reply = "211-Features:\r\n" + "".join(f" {f}\r\n" for f in fp.features) + "211 End"
        elif verb == "NOOP":
            reply = "200 NOOP ok."
        elif verb not in _FTP_VERBS:
            reply = fp.unknown_reply.format(command=verb[:32])
        if not await conn.send(crlf(reply)) or close:
            return


_FTP_VERBS = frozenset(
    {
        "ABOR",
        "ACCT",
        "ALLO",
        "APPE",
        "AUTH",
        "CDUP",
        "CWD",
        "DELE",
        "EPRT",
        "EPSV",
        "HELP",
        "LIST",
        "MDTM",
        "MKD",
        "MLSD",
        "MLST",
        "MODE",
        "NLST",
        "OPTS",
        "PASV",
        "PBSZ",
        "PORT",
        "PROT",
        "PWD",
        "REIN",
        "REST",
        "RETR",
        "RMD",
        "RNFR",
        "RNTO",
        "SITE",
        "SIZE",
        "SMNT",
        "STAT",
        "STOR",
        "STOU",
        "STRU",
        "TYPE",
    }
)


def _ftp_address(conn: Connection) -> str:
    return conn.local_address if ":" in conn.local_address else f"::ffff:{conn.local_address}"
