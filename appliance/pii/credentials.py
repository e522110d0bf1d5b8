"""Secrets: API keys, tokens, private keys and passwords (type SECRET).

(The module is not called ``secrets`` so that it never shadows the standard library's.)

Three kinds of evidence, from strongest to weakest:

1. A vendor prefix with the vendor's length and alphabet: OpenAI ``sk-``/``sk-proj-``,
   Anthropic ``sk-ant-``, GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``,
   AWS access key ids ``AKIA``/``ASIA``, Slack ``xox[baprs]-``, Google ``AIza``, Stripe
   ``sk_live_``/``rk_live_`` (and ``_test_``), GitLab ``glpat-``, Hugging Face ``hf_``, npm
   ``npm_``, JSON web tokens (``eyJ…``.``eyJ…``.``…``) and PEM private-key blocks. The part
   after the prefix must look generated (digits, or mixed case): ``sk-loading-spinner-wrap``
   is a CSS class.
2. A context word (password, secret, token, api key, access key, credential, bearer …, also
   as part of an identifier: ``aws_secret_access_key``, ``DB_PASSWORD``, ``clientSecret``)
   followed by ``:``, ``=``, ``is`` and a value. After the secret-like words the value must
   *look* random: at least 20 characters, two character classes and a Shannon entropy of
   at least 3 bits per character (so ``token: see the vault`` is not a secret, while an AWS
   secret key, a hex API key or a UUID given as a key is). A hex digest next to "sha256",
   "checksum", "commit" … is never a secret.
3. After password words any value counts (``password: hunter2!``) unless it is a
   placeholder (``****``, ``<redacted>``, ``required``), a code reference (``$DB_PASS``,
   ``os.environ[...]``, ``config.password``) or, after "is", a plain lower-case word ("the
   password is wrong"). ``--password value`` command-line flags count, identifiers that
   describe a secret instead of holding one (``password_min_length = 12``,
   ``password_hash: …``, ``token_count``) do not. Passwords in URLs
   (``postgres://user:pw@host``) count too.

Without a prefix or a context word nothing is reported: UUIDs, git SHAs and hashes are too
common in prompts to be treated as secrets on their shape alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from appliance.pii.context import (
    character_classes,
    contains_any,
    fold,
    glued_before,
    matches_near,
    shannon_entropy,
)
from appliance.pii.findings import SECRET, Finding

_PREFIXED = re.compile(
    r"(?:"
    r"sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{20,}"
    r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r")(?![A-Za-z0-9_\-])"
)
_PREFIXES: tuple[str, ...] = ("sk-", "sk_", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_")
_PREFIXES += ("github_pat_", "AKIA")
_PREFIXES += ("ASIA", "ABIA", "ACCA", "xox", "AIza", "glpat-", "hf_", "npm_", "eyJ")
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")
_PEM_BODY = re.compile(r"(?:\r?\n[A-Za-z0-9+/=:,\- ]{1,100})*")

# Matched in the lower-cased text; the word boundary (or camelCase hump) is checked on the
# original, and `_IDENTIFIER_TAIL` then takes the rest of an identifier (``_access_key``).
_CONTEXT_WORD = re.compile(
    r"(?P<password>password|passwd|passphrase|passcode|pwd|passwort|kennwort|mot\s+de\s+passe"
    r"|contrase[ñn]a)"
    r"|(?P<secret>secret|token|api[_\-\s]?key|apikey|access[_\-\s]?key|private[_\-\s]?key"
    r"|credentials?|client[_\-\s]?secret|auth[_\-]?token|session[_\-\s]?id|bearer)"
)
_CONTEXT_STEMS: tuple[str, ...] = ("pass", "pwd", "kennwort", "contrase", "secret", "token", "key")
_CONTEXT_STEMS += ("credential",)
_CONTEXT_STEMS += ("auth", "session", "bearer")
_IDENTIFIER_TAIL = re.compile(r"[_\-][A-Za-z0-9_\-]{0,30}|(?<=[a-z])[A-Z][A-Za-z0-9]{0,20}")
_SEPARATOR = re.compile(
    r"[\"']?[ \t]*(?::=|=>|->|[:=])[ \t]*|[ \t]+(?P<is>is|was|ist|est)[ \t]*:?[ \t]+"
)
_BEARER_GAP = re.compile(r"[ \t]+")
# "--password hunter2": a command-line flag takes its value after a blank.
_FLAG_GAP = re.compile(r"[ \t]+(?=[^\s-])")
# Identifiers that describe a secret rather than hold one: password_min_length = 12.
_METADATA_TAIL = re.compile(
    r"[_\-]?(?:min|max|length|len|policy|hash|hashed|salt|expiry|expires|expiration|age|reset"
    r"|file|path|env|field|label|prompt|hint|rule|rules|strength|count|timeout|required|enabled"
    r"|type|url|endpoint|name|id|size|limit|ttl|lifetime|rotation|manager)(?![a-z])"
)
_QUOTED = re.compile(r"([\"'`])([^\"'`\n]{1,200})\1")
_UNQUOTED = re.compile(r"[^\s\"'`<>]{1,200}")
_HASH_WORDS = re.compile(
    r"(?<![a-z0-9])(?:sha-?[0-9]*|md5|checksum|hash|digest|commit|fingerprint|etag|crc32?)"
    r"(?![a-z0-9])"
)
_PLACEHOLDER = re.compile(
    r"(?i)(?:\*+|x+|\.+|-+|#+|<[^>]*>|\[[^\]]*\]|\{[^}]*\}|none|null|nil|true|false|empty"
    r"|required|optional|unknown|n/a|redacted|hidden|changed|reset|expired|incorrect|wrong"
    r"|invalid|missing|same|here|set|unset|not\s+set|see\s+.*)"
)
# Values that name a secret instead of being one: $VAR, ${x}, os.environ[...], f(x),
# config.password, DB_PASSWORD.
_CODE_REFERENCE = re.compile(
    r"[$%{<].*|[A-Za-z0-9_.]*\(.*|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|[A-Za-z_][A-Za-z0-9_.]*\[.*"
    r"|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
)
_URL_PASSWORD = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{1,100}:([^\s@/]{1,100})@")
_TRAILING = ".,;:)]}"

SECRET_MIN_LENGTH = 20  # characters of a context secret (API key, token)
SECRET_MIN_ENTROPY = 3.0  # bits per character
SECRET_MIN_CLASSES = 2  # of lower, upper, digits, symbols


def looks_random(value: str) -> bool:
    """Whether `value` is long and varied enough to be a generated key or token."""
    return (
        len(value) >= SECRET_MIN_LENGTH
        and " " not in value
        and character_classes(value) >= SECRET_MIN_CLASSES
        and shannon_entropy(value) >= SECRET_MIN_ENTROPY
    )


def _generated(token: str) -> bool:
    """Keys are random: digits, or both cases ("sk-loading-spinner-wrapper" is a CSS class)."""
    return any(c.isdigit() for c in token[4:]) or (
        any(c.isupper() for c in token[4:]) and any(c.islower() for c in token[4:])
    )


def _plausible_password(value: str, after_is: bool) -> bool:
    if _PLACEHOLDER.fullmatch(value) or _CODE_REFERENCE.fullmatch(value):
        return False
    # After "is" a plain lower-case word is prose: "the password is wrong".
    return not (after_is and value.isalpha() and value.islower())


class SecretRecognizer:
    """API keys by vendor prefix, private keys, and secrets or passwords after a keyword."""

    name = "secret"
    types = (SECRET,)
    score_prefixed = 0.95
    score_private_key = 0.99
    score_jwt = 0.9
    score_url_password = 0.85
    score_context = 0.8
    score_password = 0.7

    def find(self, text: str) -> Iterator[Finding]:
        if contains_any(text, _PREFIXES):
            for match in _PREFIXED.finditer(text):
                if glued_before(text, match.start(), "-") or not _generated(match.group()):
                    continue
                jwt = match.group().startswith("eyJ")
                score = self.score_jwt if jwt else self.score_prefixed
                yield Finding(SECRET, match.start(), match.end(), score, self.name)
        if "-----BEGIN" in text:
            yield from self._private_keys(text)
        if "://" in text:
            for match in _URL_PASSWORD.finditer(text):
                yield Finding(SECRET, *match.span(1), self.score_url_password, self.name)
        folded = fold(text)
        for word in matches_near(_CONTEXT_WORD, folded, _CONTEXT_STEMS):
            start = word.start()
            if start > 0 and text[start - 1].isalnum():
                camel = text[start - 1].islower() or text[start - 1].isdigit()
                if not (camel and text[start].isupper()):
                    continue  # inside a word: "tokens", "bypassword"
            finding = self._after_word(text, folded, word)
            if finding is not None:
                yield finding

    def _private_keys(self, text: str) -> Iterator[Finding]:
        for begin in _PEM_BEGIN.finditer(text):
            end_marker = f"-----END {begin.group(1)}PRIVATE KEY{begin.group(2) or ''}-----"
            end = text.find(end_marker, begin.end())
            if end >= 0:
                stop = end + len(end_marker)
            else:  # a truncated block: the marker and the base64 lines under it
                body = _PEM_BODY.match(text, begin.end())
                stop = body.end() if body else begin.end()
            yield Finding(SECRET, begin.start(), stop, self.score_private_key, self.name)

    def _after_word(self, text: str, folded: str, word: re.Match[str]) -> Finding | None:
        position = word.end()
        tail = _IDENTIFIER_TAIL.match(text, position)
        if tail is not None:
            if _METADATA_TAIL.search(folded, tail.start(), tail.end()):
                return None
            position = tail.end()
        is_password = word.group("password") is not None
        if word.group("secret") and word.group("secret").lower() == "bearer":
            separator = _BEARER_GAP.match(text, position)
            after_is = False
        else:
            separator = _SEPARATOR.match(text, position)
            after_is = bool(separator and separator.group("is"))
            if separator is None and text.startswith("--", word.start() - 2):
                separator = _FLAG_GAP.match(text, position)
        if separator is None:
            return None
        position = separator.end()
        quoted = _QUOTED.match(text, position)
        if quoted is not None:
            start, value = quoted.start(2), quoted.group(2)
        else:
            unquoted = _UNQUOTED.match(text, position)
            if unquoted is None:
                return None
            start, value = position, unquoted.group().rstrip(_TRAILING)
        if not value:
            return None
        if _HASH_WORDS.search(folded, max(0, word.start() - 30), start):
            return None
        if is_password:
            if not _plausible_password(value, after_is):
                return None
            return Finding(SECRET, start, start + len(value), self.score_password, self.name)
        if not looks_random(value) or _CODE_REFERENCE.fullmatch(value):
            return None
        return Finding(SECRET, start, start + len(value), self.score_context, self.name)
