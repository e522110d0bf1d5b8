"""The PII analyzer the daemon runs: the rule-based recognizers, plus an NER model if installed.

Names and organisations cannot be found by rules. An active model bundle with
``role = "classifier"`` and ``task = "token-classification"`` in its ``[model]`` section
(an ONNX model, its ``tokenizer.json`` and its BIO ``labels``) fills the analyzer's NER slot:
``refresh`` builds an ``OnnxEntityRecognizer`` from it, and the next request is analyzed with
it. When several are active, the newest activated one is used. A bundle that fails to load is
logged and left out; the rule-based recognizers keep working.
"""

from __future__ import annotations

import logging

from appliance.bundles import records
from appliance.errors import ApplianceError
from appliance.home import Home
from appliance.pii.analyzer import Analyzer, default_analyzer
from appliance.pii.ner import OnnxEntityRecognizer
from appliance.runtime.manager import TOKEN_CLASSIFICATION, spec_from_record
from appliance.state import open_state

log = logging.getLogger("appliance.pii")


class AnalyzerSlot:
    """The analyzer in force; ``refresh`` follows the active NER bundle."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.analyzer: Analyzer = default_analyzer()
        self.ner_digest: str | None = None
        self.error: str | None = None

    @property
    def has_ner(self) -> bool:
        return self.ner_digest is not None

    def _active_ner(self) -> records.InstalledBundle | None:
        db = open_state(self.home)
        try:
            active = records.query(db, "WHERE a.version IS NOT NULL AND b.kind = 'model'")
            newest = db.execute(
                "SELECT name, activated_at FROM active_bundles ORDER BY activated_at"
            ).fetchall()
        finally:
            db.close()
        order = {name: i for i, (name, _) in enumerate(newest)}
        candidates = [
            b
            for b in active
            if b.manifest["model"].get("role") == "classifier"
            and b.manifest["model"].get("task") == TOKEN_CLASSIFICATION
            and not b.revoked
        ]
        candidates.sort(key=lambda b: order.get(b.name, -1))
        return candidates[-1] if candidates else None

    def refresh(self) -> bool:
        """Rebuild the analyzer if the active NER bundle changed; True when it did."""
        bundle = self._active_ner()
        digest = bundle.digest if bundle is not None else None
        if digest == self.ner_digest:
            return False
        base = default_analyzer()
        if bundle is None:
            self.analyzer, self.ner_digest, self.error = base, None, None
            log.info("NER model removed: rule-based PII recognizers only")
            return True
        spec = spec_from_record(self.home, bundle)
        try:
            recognizer = OnnxEntityRecognizer(
                spec.weights,
                spec.payload / str(spec.extra.get("tokenizer", "tokenizer.json")),
                list(spec.extra.get("labels", ())),
                max_tokens=spec.context_length,
                name=f"{spec.name} {spec.version}",
            )
        except ApplianceError as e:
            if self.error != str(e):
                log.error("NER model %s %s not used: %s", spec.name, spec.version, e)
            self.error = str(e)
            return False
        self.analyzer = Analyzer([*base.recognizers, recognizer])
        self.ner_digest, self.error = digest, None
        log.info("NER model %s %s finds %s", spec.name, spec.version, ", ".join(recognizer.types))
        return True
