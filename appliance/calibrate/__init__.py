"""``appliance calibrate``: the escalation threshold from the box's own pairs, and audit samples.

Every escalated query leaves in the outbox the local answer, its confidence and the
upstream's (golden) answer. From those pairs the box estimates how often a local answer
agrees with the upstream among the answers a threshold would keep on the box, and so the
threshold that reaches a target agreement at the lowest escalation rate (and cost).

Golden answers exist only for queries that were sent upstream, i.e. mostly the unconfident
ones; audit sampling (the policy's ``cascade.audit_rate``) also sends a small random share of
the confident ones, and each pair is weighted by the inverse of the probability with which it
was drawn, so the estimates are not biased toward the escalated side. One module per concept:

    sampling.py  which confident answers are audit-sampled, and the audit item itself
    pairs.py     the pairs from the outbox, with their weights; agreement under a measure
    estimate.py  weighted agreement and escalation rate by threshold, Wilson intervals, the
                 recommendation (or the refusal, on too few pairs)
    draft.py     a policy draft with the recommended threshold, for the operator to sign
    observed.py  what ``appliance status`` shows: agreement at the threshold in force
    errors.py    CalibrationError (exit 1: nothing recommended)
"""
