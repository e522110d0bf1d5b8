"""One log line format: every line the daemon writes to stderr is one JSON object.

llama.cpp's own messages (``llama_kv_cache_iswa: using full-size SWA cache …``) used to reach
stderr as bare text, and the inbox logged a Python dict inside ``msg`` (issue 19). Here a real
``appliance serve`` loads the Gemma demo model, answers, and refuses a bundle dropped into its
inbox; every line it wrote must parse, and no ``msg`` may hold a dict.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance import logs
from appliance.home import Home
from appliance.tokens import TokenStore
from tests.daemon import MODEL, gemma_home

DICT_IN_TEXT = re.compile(r"\{\s*'[^']*'\s*:")  # how Python prints a dict: {'key': ...


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: object, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the daemon exited: {log.read_text()[-2000:]}"
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """The stderr lines of a daemon that loaded a model, answered, and refused a bundle."""
    root = tmp_path_factory.mktemp("log-format")
    home: Home = gemma_home(root)
    token = TokenStore(home).create("device", "infer")
    port = _free_port()
    log = root / "daemon.log"
    env = {**os.environ, "APPLIANCE_HOME": str(home.root)}
    env.pop("APPLIANCE_LOG_LEVEL", None)  # the service's default level
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, "readiness", process, log)
        answer = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": "The sky is", "max_tokens": 2},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        (home.inbox_dir / "junk-1.0.bundle").write_bytes(b"not a bundle at all" * 50)
        refused = home.inbox_dir / "refused" / "junk-1.0.bundle"
        _wait(refused.exists, "the inbox refusal", process, log)
        _wait(lambda: b"junk-1.0.bundle" in log.read_bytes(), "the inbox log line", process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    lines = log.read_text("utf-8").splitlines()
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {number} of the daemon's stderr is not JSON: {line[:300]!r}")
    yield parsed


def test_every_stderr_line_is_one_json_object(served: list[dict]):
    assert served, "the daemon wrote nothing"
    for record in served:
        assert isinstance(record, dict)
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record


def test_llama_cpp_speaks_through_the_logger(served: list[dict]):
    native = [r for r in served if r["logger"] == logs.LLAMA_LOGGER]
    swa = [r for r in native if r["msg"].startswith("llama_kv_cache_iswa: using full-size SWA")]
    assert swa and all(r["level"] == "warning" for r in swa)
    assert all("\n" not in r["msg"] and r["msg"] == r["msg"].rstrip() for r in native)
    # llama.cpp's INFO chatter (tensor and buffer sizes) is debug here: not at the default level
    assert not any(r["msg"].startswith("llama_kv_cache: size =") for r in native)


def test_no_message_holds_a_dict(served: list[dict]):
    for record in served:
        assert not DICT_IN_TEXT.search(record["msg"]), record["msg"]
    inbox = [r for r in served if r["msg"].startswith("inbox: junk-1.0.bundle refused: ")]
    assert len(inbox) == 1
    fields = inbox[0]["inbox"]  # the result, as a JSON object of its own
    assert fields["outcome"] is None and fields["error"] in inbox[0]["msg"]
    assert fields["moved_to"].endswith("refused/junk-1.0.bundle")


def test_pieces_of_a_llama_message_make_one_line_at_its_level(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger=logs.LLAMA_LOGGER)
    logs.llama_message(3, b"llama_model_load: part one")  # WARN, no end of line yet
    assert not caplog.records
    logs.llama_message(5, b", part two\nsecond line\n")  # CONT: the same level
    logs.llama_message(4, b"ggml: an error\n")
    logs.llama_message(2, "tensor sizes \xe2\x9c\x93\n".encode("latin-1"))  # bad UTF-8 is kept
    logs.llama_message(3, b"\n")  # an empty line is dropped
    got = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert got[:3] == [
        (logging.WARNING, "llama_model_load: part one, part two"),
        (logging.WARNING, "second line"),
        (logging.ERROR, "ggml: an error"),
    ]
    assert got[3][0] == logging.DEBUG and got[3][1].startswith("tensor sizes")
    assert len(got) == 4
    logs.llama_message(3, b"x" * 5000)  # never finished: logged once it is too long to wait for
    assert caplog.records[-1].getMessage() == "x" * 5000


def test_log_lines_survive_while_llama_cpp_silences_stderr(tmp_path: Path):
    """llama-cpp-python points descriptor 2 at /dev/null while it loads a model; another
    thread's lines (a request served by a model already loaded) must still be written."""
    script = (
        "import logging\n"
        "from llama_cpp._utils import suppress_stdout_stderr\n"
        "from appliance import logs\n"
        "logs.configure('info')\n"
        "log = logging.getLogger('appliance.test')\n"
        "log.info('before')\n"
        "with suppress_stdout_stderr(disable=False):\n"
        "    log.info('while a model loads')\n"
        "log.info('after')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line)["msg"] for line in result.stderr.splitlines()]
    assert messages == ["before", "while a model loads", "after"]
