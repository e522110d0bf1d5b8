"""Every error the appliance raises on purpose, in one place.

Each error carries a message meant for an operator (one line, naming the cause) and the
exit code the CLI returns for it. Foreign errors are wrapped at the boundary with
``raise XError(...) from e`` so a user never sees a raw traceback.

    ApplianceError                      exit 1 unless noted
    ├── UsageError                      exit 2: the command line itself is wrong
    ├── ConfigError                     config.toml or a policy file is invalid
    │   └── PolicyError                 a policy file or bundle is invalid (every problem listed)
    ├── HomeError                       APPLIANCE_HOME is unusable
    ├── StateError                      state.db is unusable or inconsistent
    ├── KeyFileError                    a key file is missing, unreadable or malformed
    ├── TrustError                      the trust store refuses an operation
    ├── TokenError                      a device token operation is refused
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


class ApplianceError(Exception):
    """Base of every deliberate appliance error."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ApplianceError):
    """The command line is wrong."""

    exit_code = 2


class ConfigError(ApplianceError):
    """A configuration or policy file is invalid."""


class PolicyError(ConfigError):
    """A policy file (or policy bundle) is invalid; the message lists every problem."""


class HomeError(ApplianceError):
    """APPLIANCE_HOME cannot be used."""


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
