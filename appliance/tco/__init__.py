"""Token economics: what the box served, what that would have cost on the API, what it did.

``ledger`` writes one row per inference request and one per upstream answer; ``report``
adds them up for ``appliance report tco``.
"""
