"""The request guards as pure functions: Host parsing, loopback, the auth = "none" rule."""

from __future__ import annotations

import pytest

from appliance.api.app import check_bind
from appliance.api.security import allowed_hosts, host_of, is_loopback
from appliance.errors import ConfigError
from appliance.settings import ServerSettings, Settings


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8750", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8750", "::1"),
        ("::1", "::1"),
        ("box.site.local:80", "box.site.local"),
        ("", ""),
    ],
)
def test_host_of(header: str, host: str):
    assert host_of(header) == host


def test_loopback():
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0")
    assert not is_loopback("example.com")


def test_allowed_hosts_add_the_bind_address_but_not_a_wildcard():
    assert "10.1.2.3" in allowed_hosts(ServerSettings(host="10.1.2.3"))
    wildcard = allowed_hosts(ServerSettings(host="0.0.0.0", allowed_hosts=["Box.Local"]))
    assert "0.0.0.0" not in wildcard and "box.local" in wildcard


def test_auth_none_is_refused_off_loopback():
    with pytest.raises(ConfigError, match="only on loopback"):
        check_bind(Settings(server=ServerSettings(host="0.0.0.0", auth="none")))
    check_bind(Settings(server=ServerSettings(host="127.0.0.1", auth="none")))
