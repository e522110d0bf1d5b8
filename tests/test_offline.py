"""Store-and-forward by USB: `outbox export`, `relay process`, `outbox import`.

Two real homes (a box with no uplink, a relay with one) exchange sealed batch files through
a folder standing in for the stick; the relay talks to the fake upstream over real HTTP.
Every refusal (tampered, replayed, unknown signer, wrong recipient, another box's item)
must leave the outbox as it was.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.governance.escalation import Escalation
from appliance.home import Home
from appliance.offline import Identity
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings
from appliance.state import utc_now
from tests.fake_upstream import FakeUpstream

EMAIL = "mara.quist@example.org"


@dataclass
class Site:
    box: Home
    relay: Home
    stick: Path
    fake: FakeUpstream
    monkeypatch: pytest.MonkeyPatch

    def run(self, home: Home, *args: str) -> int:
        self.monkeypatch.setenv("APPLIANCE_HOME", str(home.root))
        return main(list(args))

    def outbox(self, home: Home) -> Outbox:
        return Outbox(home, OutboxSettings())


def item(text: str = "Tell <EMAIL_1> the pump is fixed.", priority: int = 0) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at=utc_now(),
        upstream="cloud",
        endpoint="chat",
        messages=({"role": "user", "content": text},),
        mapping={"<EMAIL_1>": EMAIL},
        max_tokens=16,
        local_answer="a local guess",
        confidence=0.1,
        priority=priority,
    )


def _card(home: Home, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APPLIANCE_HOME", str(home.root))
    assert main(["identity", "--out", str(out)]) == 0
    return out


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-relay") as server:
        yield server


@pytest.fixture
def site(tmp_path: Path, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Site:
    box, relay = Home(tmp_path / "box").ensure(), Home(tmp_path / "relay").ensure()
    box_card = _card(box, tmp_path / "box.card", monkeypatch)
    relay_card = _card(relay, tmp_path / "relay.card", monkeypatch)
    (tmp_path / "relay.key").write_text("sk-relay\n")
    # The box has the upstream in its config (the policy routes to it, prices come from
    # it) but never reaches it: its base URL is a closed port.
    box.config_file.write_text(
        f"""
[offline]
name = "box-1"
relay_card = "{relay_card}"
[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "big-model"
price_input_per_mtok = 2.0
price_output_per_mtok = 10.0
"""
    )
    relay.config_file.write_text(
        f"""
[offline]
name = "relay-hq"
appliance_cards = ["{box_card}"]
[sync]
backoff_base_s = 0.05
backoff_max_s = 0.1
[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "{fake.url}"
model = "big-model"
api_key_file = "{tmp_path / "relay.key"}"
"""
    )
    stick = tmp_path / "stick"
    return Site(box, relay, stick, fake, monkeypatch)


def _states(outbox: Outbox) -> dict[str, str]:
    return {i.id: i.state for i in outbox.list(limit=1000)}


def _round_trip(site: Site) -> None:
    assert site.run(site.box, "outbox", "export", "--out", str(site.stick)) == 0
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 0
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 0


def test_round_trip_answers_reach_the_box(site: Site, capsys: pytest.CaptureFixture[str]):
    items = [item(), item("Summarise the shift log.", priority=5), item("Draft a memo.")]
    with site.outbox(site.box) as outbox:
        outbox.enqueue_many(items)

    assert site.run(site.box, "outbox", "export", "--out", str(site.stick), "--json") == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["items"] == 3 and len(exported["files"]) == 1
    [request_file] = [Path(p) for p in exported["files"]]
    raw = request_file.read_bytes()
    # Sealed: neither the prompt nor the PII (which never left: placeholders) is readable.
    assert b"shift log" not in raw and b"pump" not in raw and EMAIL.encode() not in raw
    with site.outbox(site.box) as outbox:
        assert set(_states(outbox).values()) == {"queued"}  # still the box's promise

    assert site.run(site.box, "outbox", "export", "--out", str(site.stick), "--json") == 0
    assert json.loads(capsys.readouterr().out)["items"] == 0  # exported once

    args = ("relay", "process", str(site.stick), "--out", str(site.stick), "--json")
    assert site.run(site.relay, *args) == 0
    relayed = json.loads(capsys.readouterr().out)
    assert (relayed["taken"], relayed["items_in"], relayed["sent"]) == (1, 3, 3)
    assert relayed["items_out"] == 3 and relayed["pending"] == 0
    sent = [r for r in site.fake.requests if "idempotency-key" in r.headers]  # not probes
    # Highest priority first; the escalation id is the Idempotency-Key; only placeholders left.
    assert sent[0].headers["idempotency-key"] == items[1].id
    assert {r.headers["idempotency-key"] for r in sent} == {i.id for i in items}
    assert all(EMAIL not in json.dumps(r.body) for r in sent)

    assert site.run(site.box, "outbox", "import", str(site.stick), "--json") == 0
    imported = json.loads(capsys.readouterr().out)
    assert (imported["batches"], imported["answered"]) == (1, 3)
    assert imported["skipped"] == []  # the relay marked the request batch taken
    with site.outbox(site.box) as outbox:
        assert set(_states(outbox).values()) == {"done"}
        result = outbox.result(items[0].id)
        assert result is not None
        assert result.text == "upstream: Tell <EMAIL_1> the pump is fixed."
        assert (result.prompt_tokens, result.completion_tokens) == (11, 7)
        assert result.cost_usd == pytest.approx((11 * 2.0 + 7 * 10.0) / 1e6)  # the box's price
        assert outbox.mapping(items[0].id) == {"<EMAIL_1>": EMAIL}  # re-hydration stays possible
        golden = [g for g, _ in outbox.golden()]
        assert {g.local_answer for g in golden} == {"a local guess"}


def test_a_replayed_batch_is_refused_on_both_sides(site: Site, capsys):
    [one] = [item()]
    with site.outbox(site.box) as outbox:
        outbox.enqueue(one)
    _round_trip(site)
    capsys.readouterr()
    with site.outbox(site.box) as outbox:
        before = outbox.result(one.id)

    # The same stick again: the relay refuses the request batch, sends nothing new.
    def sends() -> int:
        return len([r for r in site.fake.requests if "idempotency-key" in r.headers])

    # Taken batches are renamed, so a second honest run does nothing ...
    taken = sorted(p.name for p in site.stick.iterdir())
    assert all(name.endswith(".sealed.taken") for name in taken) and len(taken) == 2
    calls = sends()
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 0
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 0
    assert sends() == calls
    # ... and a copy put back under its old name is a replay.
    for name in taken:
        (site.stick / name).rename(site.stick / name.removesuffix(".taken"))
    capsys.readouterr()
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 1
    assert "already taken" in capsys.readouterr().err
    assert sends() == calls

    # ... and the box refuses the result batch it took before.
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 1
    err = capsys.readouterr().err
    assert "already taken" in err and "replayed" in err
    with site.outbox(site.box) as outbox:
        assert outbox.result(one.id) == before


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_bytes())
    change(document)
    path.write_text(json.dumps(document))


def _flip_sealed(document: dict) -> None:
    sealed = bytearray(base64.b64decode(document["sealed"]))
    sealed[len(sealed) // 2] ^= 0x01
    document["sealed"] = base64.b64encode(bytes(sealed)).decode()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_flip_sealed, "does not verify"),
        (lambda d: d["header"].update(created="2020-01-01T00:00:00.000000Z"), "does not verify"),
        (lambda d: d["header"].update(kind="requests"), "skipped"),
        (lambda d: d.update(signature=base64.b64encode(bytes(64)).decode()), "does not verify"),
        (lambda d: d.update(signature="%%%"), "not base64"),
        (lambda d: d["header"].update(suite="ROT13"), "cipher suite"),
        (lambda d: d.pop("sealed"), "wrong fields"),
    ],
    ids=["ciphertext", "header", "kind", "signature", "garbage-sig", "suite", "missing"],
)
def test_a_tampered_result_batch_changes_nothing(site: Site, capsys, change, reason):
    one = item()
    with site.outbox(site.box) as outbox:
        outbox.enqueue(one)
    assert site.run(site.box, "outbox", "export", "--out", str(site.stick)) == 0
    results = site.stick.parent / "results"
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(results)) == 0
    [path] = list(results.iterdir())
    _edit(path, change)
    capsys.readouterr()

    code = site.run(site.box, "outbox", "import", str(results), "--json")
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    if reason == "skipped":  # relabelled as a request batch: not taken as results
        assert code == 0 and report["skipped"] == [path.name]
    else:
        assert code == 1 and reason in captured.err and report["batches"] == 0
    with site.outbox(site.box) as outbox:
        assert _states(outbox) == {one.id: "queued"}
        assert outbox.result(one.id) is None


def test_garbage_and_oversized_files_are_refused(site: Site, capsys):
    site.stick.mkdir()
    (site.stick / "results-x.sealed").write_bytes(b"\x00not json")
    (site.stick / "results-y.sealed").write_bytes(b"{" * (64 * 1024 * 1024 + 1))
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 1
    err = capsys.readouterr().err
    assert "results-x.sealed: refused: not a sealed batch" in err
    assert "results-y.sealed: refused: larger than" in err


def test_batches_of_strangers_are_refused(site: Site, tmp_path: Path, capsys):
    """A batch signed by a key the peer does not know, or sealed to another box."""
    stranger = Home(tmp_path / "stranger").ensure()
    stranger_card = _card(stranger, tmp_path / "stranger.card", site.monkeypatch)
    stranger.config_file.write_text(f'[offline]\nrelay_card = "{tmp_path / "relay.card"}"\n')
    with site.outbox(stranger) as outbox:
        outbox.enqueue(item())
    assert site.run(stranger, "outbox", "export", "--out", str(site.stick)) == 0
    capsys.readouterr()
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 1
    assert "signed by unknown key" in capsys.readouterr().err
    assert not [r for r in site.fake.requests if "idempotency-key" in r.headers]

    # The relay serves the stranger too, but its results are sealed to the stranger: the box
    # (which trusts the relay's signature) still cannot take them.
    config = site.relay.config_file.read_text()
    site.relay.config_file.write_text(
        config.replace('appliance_cards = ["', f'appliance_cards = ["{stranger_card}", "')
    )
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 0
    capsys.readouterr()
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 1
    assert "not to this box" in capsys.readouterr().err


def test_a_box_cannot_claim_another_boxs_item(site: Site, tmp_path: Path, capsys):
    """A second box naming an item id of the first never gets the first box's answer."""
    one = item()
    with site.outbox(site.box) as outbox:
        outbox.enqueue(one)
    assert site.run(site.box, "outbox", "export", "--out", str(site.stick)) == 0
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 0

    thief = Home(tmp_path / "thief").ensure()
    thief_card = _card(thief, tmp_path / "thief.card", site.monkeypatch)
    thief.config_file.write_text(f'[offline]\nrelay_card = "{tmp_path / "relay.card"}"\n')
    config = site.relay.config_file.read_text()
    site.relay.config_file.write_text(
        config.replace('appliance_cards = ["', f'appliance_cards = ["{thief_card}", "')
    )
    copy = Escalation(**{**one.__dict__, "mapping": {}})
    with site.outbox(thief) as outbox:
        outbox.enqueue(copy)
    stick2 = tmp_path / "stick2"
    assert site.run(thief, "outbox", "export", "--out", str(stick2)) == 0
    capsys.readouterr()
    assert site.run(site.relay, "relay", "process", str(stick2), "--out", str(stick2)) == 1
    assert "relayed for another box" in capsys.readouterr().err
    assert not [p for p in stick2.iterdir() if p.name.startswith("results-")]


def test_the_relay_keeps_what_it_cannot_send_yet(site: Site, capsys):
    one, refused = item(), item("Something the upstream refuses.")
    with site.outbox(site.box) as outbox:
        outbox.enqueue_many([one, refused])
    assert site.run(site.box, "outbox", "export", "--out", str(site.stick)) == 0
    capsys.readouterr()
    site.fake.down()
    args = ("relay", "process", str(site.stick), "--out", str(site.stick), "--json")
    assert site.run(site.relay, *args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["items_in"], first["sent"], first["items_out"], first["pending"]) == (2, 0, 0, 2)
    assert first["waiting"] == "no uplink is up"

    site.fake.up()
    site.fake.reply = lambda body: "fine"
    site.fake.fail(400)  # the first item sent (equal priority: the older, `one`) is refused
    assert site.run(site.relay, *args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["taken"], second["sent"], second["failed"], second["items_out"]) == (0, 1, 1, 2)

    assert site.run(site.box, "outbox", "import", str(site.stick), "--json") == 0
    imported = json.loads(capsys.readouterr().out)
    assert (imported["answered"], imported["failed"]) == (1, 1)
    with site.outbox(site.box) as outbox:
        states = _states(outbox)
        assert sorted(states.values()) == ["done", "failed"]
        [failed] = outbox.list(state="failed")
        assert failed.last_error is not None and failed.last_error.startswith("via relay: ")


def test_a_lost_stick_is_sent_again_without_double_charge(site: Site, tmp_path: Path, capsys):
    one = item()
    with site.outbox(site.box) as outbox:
        outbox.enqueue(one)
    lost, second = tmp_path / "lost", tmp_path / "second"
    assert site.run(site.box, "outbox", "export", "--out", str(lost)) == 0
    assert site.run(site.relay, "relay", "process", str(lost), "--out", str(lost)) == 0
    # The stick with the results is lost on the way back; the box sends its items again.
    assert site.run(site.box, "outbox", "export", "--out", str(second), "--again") == 0
    assert site.run(site.relay, "relay", "process", str(second), "--out", str(second)) == 0
    assert site.run(site.box, "outbox", "import", str(second)) == 0
    assert site.fake.accepted_keys[one.id] == 1  # the relay answered from its own outbox
    with site.outbox(site.box) as outbox:
        assert _states(outbox) == {one.id: "done"}
    # The first stick turns up after all: its answer is already in, nothing changes.
    capsys.readouterr()
    assert site.run(site.box, "outbox", "import", str(lost), "--json") == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == 1


def test_export_without_a_relay_is_a_clear_error(home: Home, tmp_path: Path, capsys):
    assert main(["outbox", "export", "--out", str(tmp_path / "stick")]) == 1
    err = capsys.readouterr().err
    assert "no relay is configured" in err and "[offline] relay_card" in err
    assert not (tmp_path / "stick").exists()
    assert main(["relay", "process", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert "appliance_cards" in capsys.readouterr().err


def test_identity_is_made_once_and_its_card_is_public(home: Home, tmp_path: Path, capsys):
    card_path = tmp_path / "me.card"
    assert main(["identity", "--out", str(card_path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["identity", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == first["key_id"]
    for name in ("sign.key", "box.key"):
        path = home.root / "identity" / name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.read_bytes() not in card_path.read_bytes()
    card = json.loads(card_path.read_text())
    assert set(card) == {"format", "name", "key_id", "sign_key", "box_key"}
    assert Identity(home).key_id == first["key_id"]


def test_a_bad_card_is_a_clear_error(site: Site, tmp_path: Path, capsys):
    (tmp_path / "relay.card").write_text('{"format": "appliance-card/1", "name": "x"}')
    assert site.run(site.box, "outbox", "export", "--out", str(site.stick)) == 1
    assert "relay.card: 'sign_key' is not a 32-byte public key" in capsys.readouterr().err


def test_one_bad_item_does_not_block_the_export(site: Site, capsys):
    """An item queued by an older box with a stop string over the batch format's limit is
    skipped and named (without its content); the other items travel."""
    secret_stop = "S" * 150 + "TAIL-OF-A-LONG-STOP" + "E" * 150
    bad = replace(item("Check the valve."), stop=(secret_stop,))
    good = item("Summarise the shift log.")
    with site.outbox(site.box) as outbox:
        outbox.enqueue_many([bad, good])

    assert site.run(site.box, "outbox", "export", "--out", str(site.stick), "--json") == 0
    captured = capsys.readouterr()
    exported = json.loads(captured.out)
    assert exported["items"] == 1 and len(exported["files"]) == 1
    [skipped] = exported["skipped"]
    assert skipped.startswith(f"item {bad.id}: stop.0: ")
    assert bad.id in captured.err
    assert "TAIL-OF-A-LONG-STOP" not in captured.out + captured.err
    assert "SSSS" not in captured.out + captured.err
    with site.outbox(site.box) as outbox:
        assert _states(outbox) == {bad.id: "queued", good.id: "queued"}  # kept for the uplink

    # The relay gets the good one only.
    assert site.run(site.relay, "relay", "process", str(site.stick), "--out", str(site.stick)) == 0
    assert site.run(site.box, "outbox", "import", str(site.stick)) == 0
    with site.outbox(site.box) as outbox:
        assert _states(outbox) == {bad.id: "queued", good.id: "done"}
