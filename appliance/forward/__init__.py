"""Store-and-forward: draining the outbox to the upstreams, and the daemon's escalator.

engine.py     one drain round and the background loop: leases, backoff, budgets, results
escalator.py  the router's Escalator over the outbox, the upstream clients and the monitor
distill.py    golden responses as a fine-tuning data set
"""
