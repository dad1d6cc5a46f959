"""Python client of Onramp, the adaptive onboarding recommender: track events, ask for the next step.

Needs only grpcio and protobuf (the generated stubs ``onramp.v1`` ship with it)::

    from onramp_client import OnrampClient

    with OnrampClient("127.0.0.1:50051", api_key="...") as client:
        client.set_consent("u42", purpose="tracking", granted=True, source="signup")
        client.track("feature_used", user_id="u42", feature="reports", channel="web")   # buffered
        step = client.next_step("u42", surface="in_app")
        if step.has_step:
            show(step.title)
            client.report_outcome(step.decision_id, 1.0, outcome="completed")
        result = client.flush()            # every event so far is durable on the server
        print(result.accepted, result.duplicates, result.dropped, result.rejected)

``AsyncOnrampClient`` offers the same calls for asyncio code (``await client.next_step(...)``,
``await client.flush()``, ``async with``); ``track()`` stays a plain, non-blocking call.
"""
from __future__ import annotations

from onramp_client.aio import AsyncOnrampClient
from onramp_client.client import OnrampClient
from onramp_client.errors import ClientClosed, FlushTimeout, OnrampError, QueueFull
from onramp_client.values import IngestResult, NextStep, Rejection

__all__ = ["OnrampClient", "AsyncOnrampClient", "NextStep", "IngestResult", "Rejection", "OnrampError", "QueueFull",
           "FlushTimeout", "ClientClosed"]
__version__ = "0.1.0"
