"""The gateway's Prometheus metrics: what it was asked and answered, how long devices waited, and the
sessions it holds. Each is fed by the session flow's steps (`SessionFlow.observe`) and the gateway's
refusals (`Gateway.on_refusal`); nothing walks the sessions."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from device_sdk.platform.gateway.flow import SessionKey
from device_sdk.protocol.errors import ErrorCode

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a proposal is due in tens of milliseconds, an order (a merchant's answer) in under a second."""
PENDING = 100_000
"""Start times kept for latencies; the oldest go first (a session that never finishes is not measured)."""


class GatewayMetrics:
    """The counters, histograms and gauges of one gateway, in a registry of their own."""

    def __init__(self, *, held: Callable[[], int], open_: Callable[[], int], lag: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("device_sdk_gateway_requests", "Agent requests asked of the agent", registry=r)
        self.proposals = Counter("device_sdk_gateway_proposals", "Offers (proposals) sent to devices", registry=r)
        self.confirmations = Counter(
            "device_sdk_gateway_confirmations", "Answers to offers, by decision", ["decision"], registry=r
        )
        self.results = Counter("device_sdk_gateway_results", "Sessions ended, by outcome", ["outcome"], registry=r)
        self.orders = Counter("device_sdk_gateway_orders", "Orders placed", registry=r)
        self.refusals = Counter("device_sdk_gateway_refusals", "Errors sent to devices, by code", ["code"], registry=r)
        self.proposal_seconds = Histogram(
            "device_sdk_gateway_proposal_seconds", "Agent request to offer sent", buckets=BUCKETS, registry=r
        )
        self.order_seconds = Histogram(
            "device_sdk_gateway_order_seconds", "Confirmation to order result sent", buckets=BUCKETS, registry=r
        )
        Gauge("device_sdk_gateway_sessions_held", "Sessions in memory, open or recently ended",
              registry=r).set_function(held)  # fmt: skip
        Gauge("device_sdk_gateway_sessions_open", "Sessions in memory not ended", registry=r).set_function(open_)
        behind = "How far the event loop is behind (past [capacity] max_lag new sessions are refused busy)"
        Gauge("device_sdk_gateway_loop_lag_seconds", behind, registry=r).set_function(lag)
        self._asked: OrderedDict[SessionKey, float] = OrderedDict()
        self._confirmed: OrderedDict[SessionKey, float] = OrderedDict()

    def observe(self, kind: str, key: SessionKey, fields: dict[str, Any]) -> None:
        """A step of a session (`SessionFlow.observe`)."""
        at = time.perf_counter()
        if kind == "request":
            self.requests.inc()
            _keep(self._asked, key, at)
        elif kind == "rendering":
            self.proposals.inc()
            if (asked := self._asked.pop(key, None)) is not None:
                self.proposal_seconds.observe(at - asked)
        elif kind == "confirmation":
            self.confirmations.labels(str(fields.get("decision"))).inc()
            _keep(self._confirmed, key, at)
        elif kind == "result":
            outcome = str(fields.get("outcome"))
            self.results.labels(outcome).inc()
            self._asked.pop(key, None)
            confirmed = self._confirmed.pop(key, None)
            if outcome == "ordered":
                self.orders.inc()
                if confirmed is not None:
                    self.order_seconds.observe(at - confirmed)

    def refusal(self, code: ErrorCode) -> None:
        """An error sent to a device (`Gateway.on_refusal`)."""
        self.refusals.labels(code.value).inc()

    def render(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


def _keep(started: OrderedDict[SessionKey, float], key: SessionKey, at: float) -> None:
    started[key] = at
    started.move_to_end(key)
    while len(started) > PENDING:
        started.popitem(last=False)
