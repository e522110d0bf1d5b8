"""Hybrid governance: which requests may leave the box, with what text, and when they should.

pipeline.py    one request's order of events, from classification to the audit row
classify.py    sensitivity class and hardness of a request (PII, keywords, pre-check)
confidence.py  how sure the local model was of its answer, from token log-probabilities
router.py      the decision: local, escalated, queued or refused, and why
escalation.py  what the router hands to the store-and-forward side (the interface)
audit.py       one row per decision in state.db: types of findings, never their values
active.py      which policy the daemon runs, reloaded when it changes
"""
