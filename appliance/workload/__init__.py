"""The workload audit: which of the box's workloads belong where (``appliance audit``).

``governed`` reads every request the box decided (the audit trail joined with the TCO ledger
and the outbox's golden answers), ``cells`` adds them up by sensitivity x complexity (and a
further key), ``rules`` recommends what to do with each cell and the policy change that does
it, ``report`` makes the JSON document and the CSV rows.
"""
