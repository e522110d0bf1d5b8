"""Device API tokens: hashed storage, scopes, revocation, and the `appliance tokens` CLI."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.cli import main
from appliance.errors import TokenError
from appliance.home import Home
from appliance.tokens import TokenStore, hash_token


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(home: Home, clock: Clock) -> Iterator[TokenStore]:
    s = TokenStore(home, clock=clock)
    yield s
    s.close()


def test_create_then_authenticate_gives_device_and_scope(store: TokenStore):
    infer = store.create("cam-01", "infer")
    admin = store.create("console.lab_2", "admin")

    assert infer.startswith("apl_") and len(infer) >= 4 + 43
    assert infer != admin
    a = store.authenticate(infer)
    b = store.authenticate(admin)
    assert a is not None and (a.device, a.scope) == ("cam-01", "infer")
    assert b is not None and (b.device, b.scope) == ("console.lab_2", "admin")


@pytest.mark.parametrize("kind", ["unknown", "tampered", "empty", "hash"])
def test_wrong_token_is_refused(store: TokenStore, kind: str):
    token = store.create("cam-01")
    presented = {
        "unknown": "apl_" + "A" * 43,
        "tampered": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "empty": "",
        "hash": hash_token(token),  # the stored value is not a credential
    }[kind]
    assert store.authenticate(presented) is None


def test_plaintext_token_is_never_stored(home: Home, store: TokenStore):
    token = store.create("cam-01", "admin")
    assert store.authenticate(token) is not None
    store.close()

    secret = token.removeprefix("apl_").encode()
    for path in home.root.glob("state.db*"):  # the database and its WAL
        assert secret not in path.read_bytes(), path.name
    conn = sqlite3.connect(home.state_db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                assert token not in repr(row) and secret.decode() not in repr(row), table
        assert conn.execute("SELECT token_hash FROM device_tokens").fetchone() == (
            hash_token(token),
        )
    finally:
        conn.close()


def test_revoked_token_no_longer_authenticates(store: TokenStore):
    token = store.create("cam-01")
    store.revoke("cam-01")
    assert store.authenticate(token) is None
    assert store.list() == []
    # The name is free again, with a new token; the old one stays dead.
    fresh = store.create("cam-01")
    assert store.authenticate(token) is None
    assert store.authenticate(fresh) is not None


def test_duplicate_device_is_refused_and_keeps_the_first_token(store: TokenStore):
    first = store.create("cam-01", "infer")
    with pytest.raises(TokenError, match="device cam-01 already has a token; revoke it first"):
        store.create("cam-01", "admin")
    info = store.authenticate(first)
    assert info is not None and info.scope == "infer"


@pytest.mark.parametrize(
    "name", ["", "-cam", ".cam", "cam 01", "cam/01", "cam\n", "ca\u00efm", "x" * 65]
)
def test_bad_device_name_is_refused(store: TokenStore, name: str):
    with pytest.raises(TokenError, match="invalid device name"):
        store.create(name)
    assert store.list() == []


def test_longest_device_name_is_accepted(store: TokenStore):
    store.create("x" * 64)
    assert [i.device for i in store.list()] == ["x" * 64]


def test_bad_scope_is_refused(store: TokenStore):
    with pytest.raises(TokenError, match="unknown scope 'root'"):
        store.create("cam-01", "root")  # type: ignore[arg-type]
    assert store.list() == []


def test_revoking_an_unknown_device_is_refused(store: TokenStore):
    with pytest.raises(TokenError, match="no token for device 'ghost'"):
        store.revoke("ghost")


def test_list_shows_devices_without_secrets(store: TokenStore):
    token = store.create("b-dev", "admin")
    store.create("a-dev")

    infos = store.list()

    assert [(i.device, i.scope) for i in infos] == [("a-dev", "infer"), ("b-dev", "admin")]
    assert infos[0].created_at == "2027-01-15T08:00:00Z"
    assert all(i.last_used_at is None for i in infos)
    assert token not in repr(infos) and hash_token(token) not in repr(infos)


def test_last_used_is_written_at_most_once_a_minute(store: TokenStore, clock: Clock):
    token = store.create("cam-01")

    def last_used() -> str | None:
        return store.list()[0].last_used_at

    store.authenticate(token)
    assert last_used() == "2027-01-15T08:00:00Z"
    clock.now += 59
    store.authenticate(token)
    assert last_used() == "2027-01-15T08:00:00Z"
    clock.now += 1
    info = store.authenticate(token)
    assert info is not None and info.last_used_at == "2027-01-15T08:01:00Z"
    assert last_used() == "2027-01-15T08:01:00Z"


def test_store_opens_twice_and_sees_the_same_tokens(home: Home, store: TokenStore):
    token = store.create("cam-01")
    with TokenStore(home) as again:
        info = again.authenticate(token)
    assert info is not None and info.device == "cam-01"


def test_store_works_from_other_threads(store: TokenStore):
    token = store.create("cam-01")
    with ThreadPoolExecutor(max_workers=4) as pool:
        infos = list(pool.map(store.authenticate, [token, "apl_nope"] * 8))
    assert [i.device if i else None for i in infos] == ["cam-01", None] * 8
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(store.revoke, "cam-01").result()
    assert store.authenticate(token) is None


# -- CLI ------------------------------------------------------------------------------------


def test_cli_create_list_revoke(home: Home, capsys: pytest.CaptureFixture[str]):
    assert main(["tokens", "create", "cam-01", "--scope", "admin", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert set(created) == {"device", "scope", "token"}
    assert (created["device"], created["scope"]) == ("cam-01", "admin")

    assert main(["tokens", "create", "cam-02"]) == 0
    out = capsys.readouterr().out
    assert "cannot be shown again" in out and "scope infer" in out
    plain = out.strip().splitlines()[-1]
    assert plain.startswith("apl_")

    with TokenStore(home) as store:
        a = store.authenticate(created["token"])
        b = store.authenticate(plain)
    assert a is not None and a.scope == "admin"
    assert b is not None and b.scope == "infer"

    assert main(["tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["device"], t["scope"]) for t in listed] == [("cam-01", "admin"), ("cam-02", "infer")]
    assert main(["tokens", "list"]) == 0
    table = capsys.readouterr().out
    assert "cam-01" in table and "cam-02" in table and "never" not in table  # both were used
    for text in (json.dumps(listed), table):
        assert created["token"] not in text and plain not in text
        assert hash_token(created["token"]) not in text

    assert main(["tokens", "revoke", "cam-01"]) == 0
    assert "revoked" in capsys.readouterr().out
    with TokenStore(home) as store:
        assert store.authenticate(created["token"]) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokens", "revoke", "ghost"], "no token for device 'ghost'"),
        (["tokens", "create", "bad/name"], "invalid device name 'bad/name'"),
    ],
)
def test_cli_refusals_are_one_line(
    home: Home, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_cli_duplicate_device_exits_1(home: Home, capsys: pytest.CaptureFixture[str]):
    assert main(["tokens", "create", "cam-01"]) == 0
    capsys.readouterr()
    assert main(["tokens", "create", "cam-01"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "error: device cam-01 already has a token; revoke it first"
    ]


def test_cli_bad_scope_is_usage_error(home: Home, capsys: pytest.CaptureFixture[str]):
    assert main(["tokens", "create", "cam-01", "--scope", "root"]) == 2
    assert "root" in capsys.readouterr().err
    with TokenStore(home) as store:
        assert store.list() == []
