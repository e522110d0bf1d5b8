"""Every log line of a test run, kept and scanned for PII at the end (a pytest plugin).

At session start a handler on the root logger writes every record (``appliance.*`` at
DEBUG, everything else at INFO) as the daemon's JSON lines into one file. At the end the
file is searched for every PII value of the corpus (tests/data/pii_corpus.jsonl) and the
PII constants the tests send; any hit fails the run and prints where.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import tempfile
from pathlib import Path

import pytest

from appliance.logs import JsonFormatter

TESTS = Path(__file__).parent
CORPUS = TESTS / "data" / "pii_corpus.jsonl"
_PII_NAMES = ("EMAIL", "PII", "PHONE", "IBAN", "CARD", "SSN")  # module constants tests send
MIN_LENGTH = 6  # shorter values ("7", "A1") would match anything


def pii_values() -> set[str]:
    values: set[str] = set()
    for line in CORPUS.read_text().splitlines():
        record = json.loads(line)
        for entity in record["entities"]:
            values.add(record["text"][entity["start"] : entity["end"]])
    for path in TESTS.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in _PII_NAMES
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                values.add(node.value.value)
    spelled: set[str] = set()
    for value in values:
        # A value over several lines (a card split across messages) is found as the JSON
        # log line writes it (newlines escaped) and line by line.
        spelled |= {value, json.dumps(value, ensure_ascii=False)[1:-1], *value.splitlines()}
    return {v for v in spelled if len(v) >= MIN_LENGTH}


class _Plugin:
    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="appliance-test-logs-", suffix=".jsonl")
        os.close(fd)
        self.path = Path(name)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(JsonFormatter())
        self.handler.setLevel(logging.DEBUG)
        self.summary = ""

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.getLogger("appliance").setLevel(logging.DEBUG)
        # The tests' own HTTP clients log each URL they call (some carry PII on purpose, to
        # prove the daemon does not echo it); the daemon sets httpx to WARNING as well.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        values = pii_values()
        leaks = sorted(v for v in values if v in text)
        self.summary = (
            f"log scan: {len(lines)} log lines of this run searched for "
            f"{len(values)} PII values: {len(leaks)} found"
        )
        if leaks:
            where = [line for line in lines if any(v in line for v in leaks)][:5]
            self.summary += "\n" + "\n".join(f"  LEAK {v!r}" for v in leaks[:10])
            self.summary += "\n" + "\n".join(f"  in: {line[:300]}" for line in where)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            self.path.unlink(missing_ok=True)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.summary:
            terminalreporter.write_line(self.summary)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Plugin(), "appliance-log-scan")
