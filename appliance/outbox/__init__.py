"""Store-and-forward of escalations: a durable, capped, encrypted-at-rest queue in state.db."""

from appliance.errors import OutboxError, OutboxFullError
from appliance.outbox.crypto import MapCipher
from appliance.outbox.model import OutboxItem, OutboxResult
from appliance.outbox.store import Outbox

__all__ = ["MapCipher", "Outbox", "OutboxError", "OutboxFullError", "OutboxItem", "OutboxResult"]
