"""Every error the appliance raises on purpose, in one place.

Each error carries a message meant for an operator (one line, naming the cause). How it
shows, the HTTP status (with the JSON error's type and code) and the CLI's exit code, is in
one table at the end, ``SURFACES``: the most specific class listed wins. Foreign errors are
wrapped at the boundary with ``raise XError(...) from e`` so a user never sees a raw traceback.

    ApplianceError                      exit 1 unless noted
    ├── UsageError                      exit 2: the command line itself is wrong
    ├── ConfigError                     config.toml or a policy file is invalid
    │   └── PolicyError                 a policy file or bundle is invalid (every problem listed)
    ├── HomeError                       APPLIANCE_HOME is unusable
    ├── StartupError                    exit 3: `serve` cannot listen (address in use …)
    ├── StateError                      state.db is unusable or inconsistent
    ├── KeyFileError                    a key file is missing, unreadable or malformed
    ├── TrustError                      the trust store refuses an operation
    ├── TokenError                      a device token operation is refused
    ├── QueueFullError                  a model's queue is full (HTTP 503, Retry-After)
    ├── UplinkError                     an upstream cannot answer now; the item may wait
    │   └── UpstreamError               an upstream call failed (retryable? billed?)
    ├── EscalationUnavailable           nothing can keep an escalation now
    ├── OutboxError                     an outbox operation is refused
    │   └── OutboxFullError             the outbox is at its cap (HTTP 503, Retry-After)
    ├── OfflineError                    a sealed batch, identity or card is refused
    ├── DistillError                    a distillation step (train, eval, pack) is refused
    ├── ModelError                      a model cannot be loaded or used
    │   ├── ModelLoadError              weights unreadable, or not enough memory
    │   └── ModelNotFoundError          no active model of that name
    └── BundleError                     a bundle is refused; nothing was changed
        ├── MalformedBundleError        the file is not a well-formed bundle
        │   ├── UnsafeArchiveError      hostile tar: paths, links, devices, duplicates
        │   ├── TruncatedBundleError    the file ends before it should
        │   └── ManifestError           manifest.json is invalid or oversized
        ├── SignatureError              not signed by enough trusted keys
        │   ├── UnknownKeyError         signed only by keys we do not trust
        │   └── ThresholdError          fewer valid signatures than the threshold
        ├── ExpiredBundleError          past its ``expires`` time (freeze attack)
        ├── FutureBundleError           ``created`` later than this box's clock allows
        ├── IncompatibleBundleError     ``requires`` excludes this runtime
        ├── RevokedError                the bundle or its only signers are revoked
        ├── RollbackError               sequence not above the installed floor
        ├── PayloadError                a payload file does not match the manifest
        │   ├── HashMismatchError       wrong SHA-256 (tampering, mix-and-match)
        │   └── FileTooLargeError       more bytes than declared (endless data)
        └── BundleNotFoundError         no such installed bundle/version
"""

from __future__ import annotations

from dataclasses import dataclass


class ApplianceError(Exception):
    """Base of every deliberate appliance error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def exit_code(self) -> int:
        """What the CLI exits with for this error (see ``SURFACES``)."""
        return surface(self).exit_code


class UsageError(ApplianceError):
    """The command line is wrong."""


class ConfigError(ApplianceError):
    """A configuration or policy file is invalid."""


class PolicyError(ConfigError):
    """A policy file (or policy bundle) is invalid; the message lists every problem."""


class HomeError(ApplianceError):
    """APPLIANCE_HOME cannot be used."""


class StartupError(ApplianceError):
    """`appliance serve` cannot start: its address is taken or not this machine's."""


class StateError(ApplianceError):
    """state.db cannot be used."""


class KeyFileError(ApplianceError):
    """A key file is missing, unreadable or malformed."""


class TrustError(ApplianceError):
    """The trust store refuses an operation."""


class TokenError(ApplianceError):
    """A device token operation is refused (bad name, duplicate, unknown device)."""


class DistillError(ApplianceError):
    """A distillation step is refused: bad golden data, a base it cannot use, a worse adapter."""


class QueueFullError(ApplianceError):
    """The model's queue is full; the caller should retry later (HTTP 503)."""


class UplinkError(ApplianceError):
    """The upstream could not answer now (down, timed out, refused); the item may wait."""


class UpstreamError(UplinkError):
    """An upstream call failed; ``retryable`` says whether the same request may succeed later.

    The message is one line for an operator. It never carries the API key or the request
    body (which holds the egress text), only the upstream's name, what failed and, for an
    HTTP error, the status.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        reached: bool = False,
    ) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the cause said
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s
        # The request may have reached the upstream and be billed although no usable answer
        # came back (a read timeout, a connection cut after the request was written, a 2xx
        # answer that was garbage): the ledger counts an estimate for it.
        self.reached = reached

    def __repr__(self) -> str:
        return (
            f"UpstreamError({self.message!r}, retryable={self.retryable}, "
            f"status={self.status}, retry_after_s={self.retry_after_s}, reached={self.reached})"
        )


class EscalationUnavailable(ApplianceError):
    """Nothing can take escalations on this box now (none configured, or the outbox is full)."""


class OutboxError(ApplianceError):
    """An outbox operation is refused (unknown item, wrong state, unreadable sealed map)."""


class OutboxFullError(OutboxError):
    """The outbox is at its item or byte cap and nothing may be dropped to make room."""


class OfflineError(ApplianceError):
    """A sealed batch, an identity or a card is refused; nothing was changed."""


class ModelError(ApplianceError):
    """A model cannot be loaded or used."""


class ModelLoadError(ModelError):
    """The model's weights cannot be loaded (unreadable, unsupported, or too large)."""


class ModelNotFoundError(ModelError):
    """No active model has that name."""


class BundleError(ApplianceError):
    """A bundle is refused; nothing was changed."""


class MalformedBundleError(BundleError):
    """The file is not a well-formed bundle."""


class UnsafeArchiveError(MalformedBundleError):
    """The tar holds something a bundle must never hold."""


class TruncatedBundleError(MalformedBundleError):
    """The bundle file ends before its declared content."""


class ManifestError(MalformedBundleError):
    """manifest.json (or signatures.json) is invalid."""


class SignatureError(BundleError):
    """The bundle is not signed by enough trusted keys."""


class UnknownKeyError(SignatureError):
    """No signature comes from a trusted key."""


class ThresholdError(SignatureError):
    """Fewer valid trusted signatures than the threshold."""


class ExpiredBundleError(BundleError):
    """The bundle is past its expiry time."""


class FutureBundleError(BundleError):
    """The bundle claims to be created later than the box's clock (plus skew) allows."""


class IncompatibleBundleError(BundleError):
    """The bundle requires another runtime version."""


class RevokedError(BundleError):
    """The bundle, or a key it depends on, is revoked."""


class RollbackError(BundleError):
    """The bundle's sequence is not above the installed floor."""


class PayloadError(BundleError):
    """A payload file does not match the manifest."""


class HashMismatchError(PayloadError):
    """A payload file's SHA-256 differs from the manifest."""


class FileTooLargeError(PayloadError):
    """A payload file holds more bytes than the manifest declares."""


class BundleNotFoundError(BundleError):
    """No such installed bundle or version."""


# -- how each error shows -------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """How an error reaches a person or a device."""

    http_status: int
    type: str  # the JSON error's `type` (OpenAI's vocabulary)
    code: str  # the JSON error's `code`
    exit_code: int = 1
    retry_after: bool = False  # the HTTP answer says when to try again
    param: str | None = None  # the request field the error is about


SURFACES: dict[type[ApplianceError], Surface] = {
    ApplianceError: Surface(500, "server_error", "internal_error"),
    UsageError: Surface(400, "invalid_request_error", "invalid_request", exit_code=2),
    ConfigError: Surface(500, "server_error", "config_error"),
    StartupError: Surface(500, "server_error", "startup_failed", exit_code=3),
    TokenError: Surface(400, "invalid_request_error", "token_refused"),
    DistillError: Surface(400, "invalid_request_error", "distill_refused"),
    QueueFullError: Surface(503, "overloaded_error", "queue_full", retry_after=True),
    OutboxError: Surface(409, "invalid_request_error", "outbox_refused"),
    OutboxFullError: Surface(503, "overloaded_error", "outbox_full", retry_after=True),
    UplinkError: Surface(502, "upstream_error", "upstream_unavailable"),
    EscalationUnavailable: Surface(503, "overloaded_error", "escalation_unavailable"),
    ModelError: Surface(400, "invalid_request_error", "model_error"),
    ModelLoadError: Surface(503, "server_error", "model_unavailable"),
    ModelNotFoundError: Surface(404, "not_found_error", "model_not_found", param="model"),
    BundleError: Surface(400, "invalid_request_error", "bundle_refused"),
    BundleNotFoundError: Surface(404, "not_found_error", "bundle_not_found"),
}


def surface(error: ApplianceError) -> Surface:
    """The row of ``SURFACES`` for `error`: its own class's, else its nearest base's."""
    for cls in type(error).__mro__:
        if issubclass(cls, ApplianceError) and cls in SURFACES:
            return SURFACES[cls]
    return SURFACES[ApplianceError]


# -- every exit code of the command line, in one place ---------------------------------------

# What `appliance COMMAND` exits with. The error rows come from SURFACES (an error's class);
# `appliance status` alone reports the box's health instead (``status.advice.EXIT_CODES``).
EXIT_CODES: dict[int, str] = {
    0: "success (status: healthy)",
    1: "an operation was refused, or interrupted (Ctrl-C); one line on stderr says why "
    "(status: degraded)",
    2: "bad usage: a wrong command line, or a question it may not ask without a TTY "
    "(status: the daemon is down)",
    3: "serve: the daemon cannot start (its address is in use or not this machine's, or "
    "loading failed at start)",
}
