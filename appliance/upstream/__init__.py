"""Talking to the proprietary (or on-prem) APIs that escalated requests go to.

``UpstreamClient`` speaks one ``[[upstreams]]`` entry's dialect (``openai_dialect``: chat
completions; ``anthropic_dialect``: messages) over a ``transport`` (httpx, with the CA
pinning and mTLS the config asks for);
``UplinkMonitor`` probes every upstream in the background so that the router can ask
"is the uplink up?" without any network call on the request path. Every failure is an
``UpstreamError`` that says whether waiting and retrying can help.
"""

from appliance.upstream.client import UpstreamClient
from appliance.upstream.errors import UpstreamError
from appliance.upstream.monitor import UplinkMonitor, UplinkState

__all__ = ["UplinkMonitor", "UplinkState", "UpstreamClient", "UpstreamError"]
