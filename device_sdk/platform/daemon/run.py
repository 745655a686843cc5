"""`device-sdk gateway`: the gateway as a long-running service.

It opens the stores (`[database] url`: SQLite or PostgreSQL), the consent verifier and the checkout
backend, connects the gateway to the broker, serves `/healthz`, `/readyz` and `/metrics`, and runs
until SIGTERM or SIGINT. Then it drains: it takes no new session (`busy`; `/readyz` says 503), lets
the open ones finish up to `drain_seconds`, waits for their handlers and so their commits, publishes
its retained status offline, and closes the stores (their queued writes done). Agent workers run
apart (`AgentWorker`), or in this process with `[agent] core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable
from typing import Any, cast

from device_sdk.bus.mqtt import MqttBus
from device_sdk.platform.agent import AgentCore, AgentWorker
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.backend import CheckoutBackend
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.checkout.store_url import parse_store
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.platform.gateway.gateway import Gateway
from device_sdk.protocol.errors import ConfigError

from .config import GatewayConfig
from .health import HealthServer
from .logs import FIELDS
from .metrics import GatewayMetrics

log = logging.getLogger("device_sdk.gateway")


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable `module:name` names (a checkout backend, an agent core); `ConfigError` if none."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"the {what} is named module:callable, not {spec!r}")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the {what} {spec}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"the {what} {spec} is not callable")
    return cast(Callable[..., Any], found)


async def run_gateway(config: GatewayConfig, stop: asyncio.Event | None = None) -> int:
    """Serve until `stop` is set (default: a SIGTERM or SIGINT), then drain and stop; 0 when drained."""
    stop = stop or _stop_on_signals()
    make_checkout = load_callable(config.checkout, "checkout backend")
    make_agent = load_callable(config.agent, "agent core") if config.agent else None
    async with contextlib.AsyncExitStack() as stack:
        store = parse_store(config.database, config.database_password_file)
        db = await stack.enter_async_context(Database(store))
        audit = await asyncio.to_thread(AuditLog.open, db)
        policy = PolicyBook.load(config.policy)
        verifier = await asyncio.to_thread(ConsentVerifier, db, audit, audience=config.audience, policy=policy)
        checkout = cast(CheckoutBackend, make_checkout(verifier))
        gateway = Gateway(
            config.broker, checkout, audit=audit, gateway_id=config.gateway_id, limits=config.limits,
            capacity=config.capacity,
            keep_ended=config.keep_ended, confirm_timeout=config.confirm_timeout, agent_timeout=config.agent_timeout,
        )  # fmt: skip
        metrics = GatewayMetrics(
            held=lambda: len(gateway.sessions),
            open_=lambda: gateway.flow.open_sessions,
            lag=lambda: gateway.admission.lag,
        )
        gateway.flow.observe = metrics.observe
        gateway.on_refusal = metrics.refusal
        if make_agent is not None:
            bus = await stack.enter_async_context(MqttBus(config.broker, f"agent-{gateway.gateway_id}"))
            await stack.enter_async_context(AgentWorker(bus, cast(AgentCore, make_agent())))
        await stack.enter_async_context(gateway)
        ready = lambda: gateway.bus.connected and not gateway.draining  # noqa: E731
        health = HealthServer(config.http_host, config.http_port, ready=ready, metrics=metrics.render)
        await stack.enter_async_context(health)
        log.info("ready", extra={FIELDS: {**config.described(), "gateway_id": gateway.gateway_id,
                                          "http": f"{config.http_host}:{health.port}"}})  # fmt: skip
        await stop.wait()
        log.info("draining", extra={FIELDS: {"open": gateway.flow.open_sessions, "deadline_s": config.drain_seconds}})
        left = await gateway.drain(config.drain_seconds)
        log.info("drained" if not left else "drain deadline passed", extra={FIELDS: {"left_open": left}})
    log.info("stopped", extra={FIELDS: {"gateway_id": gateway.gateway_id}})
    return 0


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (a second one of either stops at once)."""
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def first() -> None:
        log.info("signal: stopping")
        stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _exit_now)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, first)
    return stop


def _exit_now() -> None:
    raise SystemExit(143)
