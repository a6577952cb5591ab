"""Free text from callers (descriptions, references, reasons, notes): the one check every service applies.

Standard library only, so `domain.py` files may use it. Refused everywhere: the Unicode control
characters (category Cc; tab and newline only where a field allows them), the bidirectional
formatting characters (which make text display in another order than it is stored: "Trojan
Source") and the line and paragraph separators (Zl, Zp), which split a log line or a report row
as a newline would.
"""

from __future__ import annotations

import re

from servers.mesh.errors import InvalidArgument

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
"""ALM, LRM, RLM, the embeddings and overrides (LRE, RLE, PDF, LRO, RLO) and isolates (LRI, RLI, FSI, PDI)."""

_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"  # Cc without tab (U+0009) and newline (U+000A)
_SEPARATORS = "\u2028\u2029"  # Zl, Zp
_REFUSED_SINGLE_LINE = re.compile(f"[\t\n{_CONTROLS}{BIDI_CONTROLS}{_SEPARATORS}]")
_REFUSED_MULTILINE = re.compile(f"[{_CONTROLS}{BIDI_CONTROLS}{_SEPARATORS}]")


def check_free_text(
    value: str, field_name: str, max_length: int, *, multiline: bool = False, required: bool = False
) -> str:
    """`value` unchanged if it is acceptable free text, else InvalidArgument naming `field_name`.

    At most `max_length` characters; `multiline` allows tab and newline; `required` refuses "".
    """
    if required and not value:
        raise InvalidArgument(field_name, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field_name, f"must be at most {max_length} characters")
    refused = (_REFUSED_MULTILINE if multiline else _REFUSED_SINGLE_LINE).search(value)
    if refused is not None:
        raise InvalidArgument(
            field_name, f"must not contain U+{ord(refused.group()):04X} (control, bidi or separator character)"
        )
    return value
