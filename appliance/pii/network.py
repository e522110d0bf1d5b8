"""IP addresses (v4 and v6) and MAC addresses.

IPv4: exactly four dotted parts, each 0-255 without leading zeros (``ipaddress`` decides), not
glued to more dotted numbers (``1.3.6.1.4.1`` is an OID) nor to a letter (``v1.2.3.4``).
"1.2.3" is a version, not an address: three parts never match. A four-part number right
after a version word ("version 1.2.3.4", "firmware: 10.2.0.15", "build 5.1.0.2") is taken
as a version and skipped: on an edge box those words precede release numbers far more often
than addresses. Loopback and unspecified addresses (127.0.0.1, 0.0.0.0, ::1) are reported
with a low score: they identify nobody, but a policy may still want them.

IPv6: the full and the compressed forms, with an embedded IPv4 tail, checked by
``ipaddress``. C++ scopes and Python slices (``std::a``, ``x[::2]``) also parse as
compressed addresses, so a compressed address needs two non-empty groups, one of them at
least three hex digits long (``fe80::1`` and ``2001:db8::1`` pass, ``a::b`` does not).

MAC: six hex pairs separated by one kind of ``:`` or ``-``, and Cisco's ``aabb.ccdd.eeff``,
which needs a hex letter or a "MAC" word nearby since three groups of four digits are
more often something else. Twelve hex digits in a row (``001A2B3C4D5E``, as on device
labels and in inventories) are a MAC address only right after a MAC word ("MAC",
"hardware address", "BSSID" …): alone they are as likely a serial number or a hash prefix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from appliance.pii.context import contains_any, fold, glued_before, has_context, matches_near
from appliance.pii.findings import IP_ADDRESS, MAC_ADDRESS, Finding

_IPV4 = re.compile(
    r"[0-9](?<![A-Za-z0-9_][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![A-Za-z0-9_\-]|\.[0-9])"
)
_IPV4_HINT = re.compile(r"[0-9]\.[0-9]")
_VERSION_WORDS = re.compile(
    r"\b(?:version|ver|release|build|firmware|fw|rev|revision|kernel|patch|sdk|driver"
    r"|update|upgrade|bios)\b\.?\s*[:=]?\s*(?:to\s+)?$"
)
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_IPV6 = re.compile(
    r"(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![A-Za-z0-9_:]|\.[0-9])"
)
# Both MAC patterns start at their first separator, which is rarer than a hex letter; the
# look-behind then checks the hex group before it.
_MAC = re.compile(
    r"([:\-])(?<=[0-9A-Fa-f]{2}.)[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![A-Za-z0-9_:\-])"
)
_CISCO_MAC = re.compile(
    r"\.(?<=[0-9A-Fa-f]{4}\.)[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![A-Za-z0-9_]|\.[A-Za-z0-9_])"
)
_MAC_WORDS = re.compile(r"\b(?:mac|hw|hardware|ether|bssid|lladdr|address)\b")
# A MAC word, what may stand between it and the address, then twelve hex digits.
_BARE_MAC = re.compile(
    r"\b(?:mac|hw|hardware|bssid)\b(?:[ \t\-]*(?:address|addr|adresse))?"
    r"[ \t]*(?:[:=#]|is|no\.?)?[ \t]*([0-9a-f]{12})(?![a-z0-9_])"
)
_BARE_MAC_STEMS = ("mac", "hw", "hardware", "bssid")
_HEX_LETTER = re.compile(r"[A-Fa-f]")


def _plausible_ipv6(candidate: str) -> bool:
    if "::" not in candidate:  # the full form: eight groups, or six and an IPv4 tail
        return candidate.count(":") == (6 if "." in candidate else 7)
    groups = [g for g in re.split(r"::?", candidate) if g]
    return len(groups) >= 2 and any(len(g) >= 3 for g in groups)


class IpAddressRecognizer:
    """IPv4 and IPv6 addresses validated by ``ipaddress``."""

    name = "ip_address"
    types = (IP_ADDRESS,)
    score = 0.9
    score_local = 0.5  # loopback and unspecified addresses

    def find(self, text: str) -> Iterator[Finding]:
        if _IPV4_HINT.search(text):
            for match in _IPV4.finditer(text):
                if glued_before(text, match.start(), ".-"):
                    continue
                if has_context(text, match.start(), _VERSION_WORDS, 24):
                    continue
                yield from self._checked(match, ipaddress.IPv4Address)
        tried = 0  # each run of hex digits and colons is tried once, from its start
        for hint in _IPV6_HINT.finditer(text):  # ":12:" or "::", rare outside addresses
            if hint.start() < tried:
                continue
            start = hint.start()
            while start > tried and text[start - 1] in _HEX_COLON:
                start -= 1
            found = _IPV6.match(text, start)
            if found is not None and _plausible_ipv6(found.group()):
                tried = found.end()
                yield from self._checked(found, ipaddress.IPv6Address)
                continue
            tried = hint.end()
            while tried < len(text) and text[tried] in _HEX_COLON:
                tried += 1

    def _checked(
        self, match: re.Match[str], parse: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    ) -> Iterator[Finding]:
        try:
            address = parse(match.group())
        except ValueError:
            return
        local = address.is_loopback or address.is_unspecified
        score = self.score_local if local else self.score
        yield Finding(IP_ADDRESS, match.start(), match.end(), score, self.name)


class MacAddressRecognizer:
    """MAC addresses in colon, hyphen and Cisco dot notation."""

    name = "mac_address"
    types = (MAC_ADDRESS,)
    score = 0.9

    def find(self, text: str) -> Iterator[Finding]:
        for match in _MAC.finditer(text):
            start = match.start() - 2
            if not glued_before(text, start, ":-."):
                yield Finding(MAC_ADDRESS, start, match.end(), self.score, self.name)
        for match in _CISCO_MAC.finditer(text):
            start = match.start() - 4
            if glued_before(text, start, "."):
                continue
            if _HEX_LETTER.search(text, start, match.end()) or has_context(text, start, _MAC_WORDS):
                yield Finding(MAC_ADDRESS, start, match.end(), self.score, self.name)
        folded = fold(text)
        if contains_any(folded, _BARE_MAC_STEMS):
            for match in matches_near(_BARE_MAC, folded, _BARE_MAC_STEMS):
                if not glued_before(folded, match.start()):
                    yield Finding(MAC_ADDRESS, *match.span(1), self.score, self.name)
