"""TLS to an upstream: the pinned CA and the mTLS client certificate, against the fake.

A TLS refusal must be retryable (the item waits for a fixed uplink, it is not dropped) and
the pin must really exclude every other CA, including one that issued a valid certificate
for the very same address.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.upstream import UpstreamClient
from tests.fake_upstream import FakeUpstream
from tests.pki import TestPKI
from tests.test_upstream import KEY, complete, failure, make_item, make_settings, probe


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_fake(pki: TestPKI) -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key=KEY, tls=pki) as server:
        yield server


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_pinned_ca_and_client_cert(
    tls_fake: FakeUpstream, pki: TestPKI, tmp_path: Path, kind: str
) -> None:
    assert tls_fake.url.startswith("https://127.0.0.1:")
    settings = make_settings(
        tls_fake.url, kind, tmp_path, ca_file=str(pki.ca_cert), client_cert=str(pki.client_pem)
    )
    probe(settings)
    answer = complete(settings, make_item())
    assert answer.text.startswith("upstream: ")
    assert [r.method for r in tls_fake.requests] == ["GET", "POST"]


def test_no_client_cert_is_refused(tls_fake: FakeUpstream, pki: TestPKI, tmp_path: Path) -> None:
    settings = make_settings(tls_fake.url, "openai", tmp_path, ca_file=str(pki.ca_cert))
    assert failure(probe, settings).retryable
    assert failure(complete, settings, make_item()).retryable
    assert tls_fake.accepted_keys == {}


def test_client_cert_from_another_ca_is_refused(
    tls_fake: FakeUpstream, pki: TestPKI, tmp_path: Path
) -> None:
    settings = make_settings(
        tls_fake.url,
        "openai",
        tmp_path,
        ca_file=str(pki.ca_cert),
        client_cert=str(pki.rogue_client_pem),
    )
    assert failure(complete, settings, make_item()).retryable
    assert tls_fake.accepted_keys == {}


def test_server_from_another_ca_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    with FakeUpstream(api_key=KEY, tls=pki, rogue=True) as rogue:
        settings = make_settings(
            rogue.url, "anthropic", tmp_path, ca_file=str(pki.ca_cert),
            client_cert=str(pki.client_pem),
        )  # fmt: skip
        error = failure(complete, settings, make_item())
        assert error.retryable and "TLS" in str(error)
        assert rogue.requests == []  # nothing, not even headers, went to the impostor


def test_pin_excludes_the_real_ca_when_pinned_elsewhere(
    tls_fake: FakeUpstream, pki: TestPKI, tmp_path: Path
) -> None:
    settings = make_settings(
        tls_fake.url, "openai", tmp_path, ca_file=str(pki.other_ca_cert),
        client_cert=str(pki.client_pem),
    )  # fmt: skip
    error = failure(probe, settings)
    assert error.retryable and "TLS" in str(error)


def test_default_verification_refuses_a_private_ca(tls_fake: FakeUpstream, tmp_path: Path) -> None:
    error = failure(probe, make_settings(tls_fake.url, "openai", tmp_path))
    assert error.retryable


@pytest.mark.parametrize("field", ["ca_file", "client_cert"])
def test_missing_tls_files_are_config_errors(tmp_path: Path, field: str) -> None:
    settings = make_settings("https://127.0.0.1:9/v1", "openai", tmp_path, **{field: "/nope.pem"})
    with pytest.raises(ConfigError, match=r"/nope\.pem"):
        UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)


def test_client_cert_without_key_is_a_config_error(pki: TestPKI, tmp_path: Path) -> None:
    settings = make_settings(
        "https://127.0.0.1:9/v1", "openai", tmp_path, client_cert=str(pki.ca_cert)
    )
    with pytest.raises(ConfigError, match="client_cert"):
        UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)


def test_client_cert_alone_keeps_default_verification(
    tls_fake: FakeUpstream, pki: TestPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ca_file the server is checked against the default CA store, not skipped, and
    the client certificate is still presented."""
    settings = make_settings(tls_fake.url, "openai", tmp_path, client_cert=str(pki.client_pem))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the default store: certifi's CAs
    error = failure(probe, settings)
    assert error.retryable and "TLS" in str(error)  # the private CA is not in it
    assert tls_fake.requests == []

    # The same settings once the default store (httpx reads SSL_CERT_FILE) holds the CA:
    # the server is accepted, and the mTLS server only answers a client with a certificate.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    probe(settings)
    assert complete(settings, make_item()).text.startswith("upstream: ")
    assert [r.method for r in tls_fake.requests] == ["GET", "POST"]


def test_base_url_scheme_is_checked(tmp_path: Path) -> None:
    settings = make_settings("ftp://127.0.0.1/v1", "openai", tmp_path)
    with pytest.raises(ConfigError, match="base_url"):
        UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)
