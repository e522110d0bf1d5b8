"""Store-and-forward by USB: sealed batches for sites with no uplink at all.

A box exports its queued escalations as batches sealed to a *relay* (a machine with an
uplink, elsewhere); the relay sends them upstream and writes signed result batches that the
box imports. See ``envelope`` for the file format and ``README.md`` for the workflow.
"""

from appliance.errors import OfflineError
from appliance.offline.identity import Card, Identity

__all__ = ["Card", "Identity", "OfflineError"]
