"""Detectors: find sensitive spans (PII, secrets, custom patterns, terms) in text.

A `SpanDetector` is one compiled pattern plus an optional validator (Luhn for
cards, ISO 7064 mod-97 for IBANs, the SSA rules for US SSNs, numeric ranges
for IPv4), so look-alikes that fail the checksum are left alone. Every
pattern is bounded: `max_len` (derived from the pattern itself) caps how
much text a streaming check may ever hold back. Patterns use the `regex`
module so a stream can ask whether the text it holds could still become a
match (`partial=True`). They run on `normalise`d text (NFKC, invisible
characters dropped), so `a\u200b@x.com` and a full-width `＠` are still emails;
the caller maps a match back to the original characters and redacts those.

Left out: names and postal addresses (no reliable pattern; use the
classifier hook), phone numbers without a separator or `+` prefix (too many
false positives on order numbers and amounts).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import regex

try:  # Python 3.11+
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

UNBOUNDED = _sre_parse.MAXREPEAT


def pattern_max_len(pattern: str, flags: int = 0) -> int | None:
    """Longest text `pattern` can match, from its structure; None when unbounded."""
    try:
        width = _sre_parse.parse(pattern, flags).getwidth()[1]
    except (re.error, OverflowError):
        return None
    return None if width >= UNBOUNDED else int(width)


# --- normalisation ----------------------------------------------------------------

# Characters that render as nothing besides the format characters (category Cf: zero-width
# space and joiners, bidi controls, soft hyphen, BOM): the grapheme joiner and Hangul fillers.
_FILLERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")


@lru_cache(maxsize=8192)
def _normal_char(ch: str) -> str:
    if unicodedata.category(ch) == "Cf" or ch in _FILLERS:
        return ""
    return unicodedata.normalize("NFKC", ch)


def normalise(text: str) -> tuple[str, list[int] | None]:
    """`text` as the detectors read it, and where each of its characters is in `text`
    (None when it is `text` itself, as ASCII always is).

    Character by character: NFKC (full-width `＠` and digits become ASCII, `ﬁ` becomes
    `fi`) and invisible characters dropped. Per character, not per text, so a stream cut
    anywhere normalises exactly as the whole text does.
    """
    if text.isascii():
        return text, None
    pieces, source = [], []
    for i, ch in enumerate(text):
        piece = ch if ch < "\x80" else _normal_char(ch)
        pieces.append(piece)
        source.extend([i] * len(piece))
    return "".join(pieces), source


# --- validators ---------------------------------------------------------------


def luhn_ok(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Lengths of IBANs per country (ISO 13616 registry, the common ones).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(text: str) -> bool:
    compact = "".join(c for c in text if c.isalnum()).upper()
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def ssn_ok(text: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    digits = "".join(c for c in text if c.isdigit())
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area >= "900" or group == "00" or serial == "0000":
        return False
    return digits not in ("078051120", "219099999")  # famous advertising/sample numbers


def ipv4_ok(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)


def ipv6_ok(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return sum(c not in ":" for c in text) >= 2


def phone_ok(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15


# --- span detectors -------------------------------------------------------------


@dataclass(frozen=True)
class SpanDetector:
    """One bounded pattern (+ validator) that yields redactable spans."""

    name: str
    pattern: regex.Pattern
    placeholder: str
    max_len: int
    validate: Callable[[str], bool] | None = None

    def finditer(self, text: str, pos: int = 0, endpos: int | None = None, partial=False):
        end = len(text) if endpos is None else endpos
        return self.pattern.finditer(text, pos, end, partial=partial)

    def find(self, text: str) -> list[tuple[int, int]]:
        return [
            m.span()
            for m in self.finditer(text)
            if self.validate is None or self.validate(m.group())
        ]


def make_span_detector(
    name: str,
    pattern: str,
    placeholder: str,
    *,
    flags: int = 0,
    validate: Callable[[str], bool] | None = None,
) -> SpanDetector:
    """Compile `pattern`; raises ValueError when it is invalid or unbounded."""
    try:
        compiled = regex.compile(pattern, flags | regex.VERSION0)
    except regex.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None
    max_len = pattern_max_len(pattern, flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL))
    if max_len is None:
        raise ValueError(
            "the pattern can match unbounded text (uses *, + or {n,}); bound every "
            "repetition, e.g. \\w{1,64}, so streamed output can be checked with a finite hold-back"
        )
    if max_len == 0:
        raise ValueError("the pattern only matches empty text")
    return SpanDetector(name, compiled, placeholder, max_len, validate)


_SEP = r"[ \-.]?"
_ZW = "\u200b\u200c\u200d\u2060\ufeff"

BUILTIN_PATTERNS: dict[str, tuple[str, str, Callable[[str], bool] | None, int]] = {
    # name: (pattern, placeholder, validator, flags)
    "email": (
        r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
        r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,4}\.[A-Za-z]{2,24}(?![\w-])",
        "[EMAIL]",
        None,
        0,
    ),
    "payment_card": (
        # digits grouped by spaces or dashes anywhere; by dots only in the printed groups
        # (4-4-4-4[-3], Amex 4-6-5), so decimals such as 3.14159265358979 are left alone
        r"(?<![\d-])(?:\d(?:[ -]?\d){12,18}(?!\d)"
        r"|(?<!\d\.)(?:\d{4}(?:\.\d{4}){3}(?:\.\d{3})?|\d{4}\.\d{6}\.\d{5})(?![\d]|\.\d))",
        "[CARD]",
        luhn_ok,
        0,
    ),
    "iban": (
        r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])",
        "[IBAN]",
        iban_ok,
        0,
    ),
    "us_ssn": (
        r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])",
        "[SSN]",
        ssn_ok,
        0,
    ),
    "phone": (
        # +CC groups | (area) groups | NANP 415-555-0132 | trunk-0 national 020 7946 0958;
        # never the tail of a longer digit run (card and account numbers are not phones)
        r"(?<![\w+])(?<!\d[ .\-])(?:"
        r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}"
        r"|\(\d{2,4}\)[ .\-]?\d{3,4}[ .\-]?\d{3,4}"
        r"|\d{3}([.\-])\d{3}\1\d{4}"
        r"|0[1-9]\d{0,3}([ \-])\d{3,4}\2\d{3,4}"
        r"|0[1-9]\d{1,3} \d{5,8}"
        r")(?![\w-]|[ .\-]\d)",
        "[PHONE]",
        phone_ok,
        0,
    ),
    "ipv4": (
        r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)",
        "[IP]",
        ipv4_ok,
        0,
    ),
    "ipv6": (
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])",
        "[IP]",
        ipv6_ok,
        0,
    ),
    "api_key": (
        r"(?<![\w-])(?:"
        r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{20,160}"  # OpenAI/Anthropic/Stripe style
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
        r"|gh[pousr]_[A-Za-z0-9]{36,255}"  # GitHub tokens
        r"|github_pat_[A-Za-z0-9_]{22,255}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,100}"  # Slack
        r"|AIza[0-9A-Za-z_\-]{35}"  # Google API key
        r"|eyJ[A-Za-z0-9_-]{8,2000}\.eyJ[A-Za-z0-9_-]{8,4000}\.[A-Za-z0-9_-]{8,2000}"  # JWT
        r")(?![\w-])",
        "[SECRET]",
        None,
        0,
    ),
    "private_key": (
        r"-----BEGIN [A-Z0-9 ]{0,30}PRIVATE KEY( BLOCK)?-----[A-Za-z0-9+/=\s]{0,8192}"
        r"(?:-----END [A-Z0-9 ]{0,30}PRIVATE KEY( BLOCK)?-----)?",
        "[SECRET]",
        None,
        0,
    ),
}

PII_DETECTORS = ("email", "phone", "payment_card", "iban", "us_ssn", "ipv4", "ipv6")
SECRET_DETECTORS = ("api_key", "private_key")


def builtin_detector(name: str) -> SpanDetector:
    pattern, placeholder, validate, flags = BUILTIN_PATTERNS[name]
    return make_span_detector(name, pattern, placeholder, flags=flags, validate=validate)


def deny_terms_detector(name: str, terms: list[str], placeholder: str) -> SpanDetector:
    """Whole-word, case-insensitive terms; words may be split by 1-3 whitespace characters
    or zero-width characters, so `Project  Falcon` and `Pro\u200bject falcon` both match."""
    if not terms:
        raise ValueError("deny_terms needs at least one term")
    alternatives = []
    for term in sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True):
        words = []
        for word in term.split():
            words.append(f"[{_ZW}]{{0,2}}".join(regex.escape(c) for c in word))
        alternatives.append(r"\s{1,3}".join(words))
    pattern = r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)"
    return make_span_detector(name, pattern, placeholder, flags=regex.IGNORECASE)
