"""The agent core behind the bus: the interface an agent implements, the worker that hosts it on
the bus, and the client the gateway uses to reach it.

A real agent implements `AgentCore` and runs it inside `AgentWorker`; several workers split the
load through a shared subscription (`$share/<group>/...`) where the broker supports one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any, Protocol

from pydantic import ValidationError

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.pending import Pending
from device_sdk.bus.subscription import Received
from device_sdk.media.images import ImageStore
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import AgentError, DeviceSdkError, ErrorCode, ProtocolError, RequestTimeout
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal, Error, IssuedProposal, decode
from device_sdk.protocol.topics import DEFAULT_AGENT_GROUP, Topics
from device_sdk.protocol.wire_errors import first_error
from device_sdk.service import Service

log = logging.getLogger(__name__)


class AgentCore(Protocol):
    """Turns what the user asked for into a checkout proposal, or raises `AgentError` with a code."""

    async def propose(self, request: AgentRequest) -> CheckoutProposal: ...


async def supports_shared_subscriptions(bus: MqttBus, topics: Topics, timeout: float = 0.5) -> bool:
    """Ask the broker: does a `$share/...` subscription receive a message published to its topic?"""
    token = secrets.token_hex(6)
    topic = f"{topics.base}/probe/{token}"
    sub = await bus.subscribe(f"$share/probe{token}/{topic}")
    try:
        await bus.publish(topic, b"probe", qos=1)
        await sub.get(timeout)
        return True
    except RequestTimeout:
        return False
    finally:
        await sub.close()


class AgentWorker(Service):
    """Hosts an `AgentCore` on the bus: reads agent requests, answers with proposals or errors."""

    def __init__(
        self,
        bus: MqttBus,
        core: AgentCore,
        *,
        topics: Topics | None = None,
        group: str = DEFAULT_AGENT_GROUP,
        shared: bool | None = None,
        concurrency: int = 64,
        images: ImageStore | None = None,
    ) -> None:
        self.bus = bus
        self.images = images
        """Where camera images the devices publish are kept for the core (None: not subscribed)."""
        self.core = core
        self.topics = topics or Topics()
        self.group = group
        self.shared = shared
        self.handled = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._images_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.shared is None:
            self.shared = await supports_shared_subscriptions(self.bus, self.topics)
            if not self.shared:
                log.warning("broker %s has no shared subscriptions: run one agent worker only", self.bus.url)
        topic = self.topics.agent_request_shared(self.group) if self.shared else self.topics.agent_request()
        sub = await self.bus.subscribe(topic)
        self._loop_task = asyncio.create_task(self._serve(sub))
        if self.images is not None:
            pictures = await self.bus.subscribe(self.topics.all_devices("image"))
            self._images_task = asyncio.create_task(self._keep_images(pictures, self.images))

    async def _keep_images(self, sub: Any, images: ImageStore) -> None:
        async for received in sub:
            try:
                await images.put(received.payload)
            except ProtocolError as exc:
                log.warning("an image on %s refused: %s", received.topic, exc)

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, self._images_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, sub: Any) -> None:
        async for received in sub:
            await self._limit.acquire()
            task = asyncio.create_task(self._handle(received))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._limit.release()

    async def _handle(self, received: Received) -> None:
        try:
            message = decode(received.payload)
            if not isinstance(message, AgentRequest):
                raise ProtocolError(f"expected agent.request, got {message.type}", ErrorCode.UNEXPECTED_MESSAGE)
        except ProtocolError as exc:
            await self._answer(self.topics.errors(), Error(code=exc.code, text=exc.text, ref=received.topic))
            return
        reply_to = message.reply_to or self.topics.errors()
        try:
            proposal = await self.core.propose(message)
            if (proposal.request_id, proposal.device_id, proposal.session_id) != (
                message.request_id,
                message.device_id,
                message.session_id,
            ):
                raise AgentError("proposal does not answer the request it was made for", ErrorCode.BAD_PROPOSAL)
            self.handled += 1
            await self.bus.publish(reply_to, proposal.encode())
        except DeviceSdkError as exc:
            await self._answer(
                reply_to, Error(code=exc.code, text=exc.text, ref=message.request_id, session_id=message.session_id)
            )
        except ValidationError as exc:  # the core built a proposal the protocol refuses (a name, a total)
            text = f"the proposal was refused: {first_error(exc)}"
            await self._answer(
                reply_to,
                Error(code=ErrorCode.BAD_PROPOSAL, text=text, ref=message.request_id, session_id=message.session_id),
            )
        except Exception as exc:
            log.exception("agent core failed on %s", message.request_id)
            await self._answer(
                reply_to,
                Error(code=ErrorCode.INTERNAL, text=f"agent failed: {type(exc).__name__}", ref=message.request_id),
            )

    async def _answer(self, topic: str, error: Error) -> None:
        with contextlib.suppress(DeviceSdkError):
            await self.bus.publish(topic, error.encode())


class RemoteAgent:
    """The gateway's way to the agent core: a correlated request over the bus, with a timeout."""

    def __init__(self, bus: MqttBus, gateway_id: str, *, topics: Topics | None = None, timeout: float = 15.0) -> None:
        self.bus = bus
        self.topics = topics or Topics()
        self.gateway_id = gateway_id
        self.timeout = timeout
        self._pending: Pending[IssuedProposal] = Pending()
        self._task: asyncio.Task[None] | None = None

    @property
    def late_replies(self) -> int:
        """Replies that came after their timeout, or twice (several workers on a non-sharing broker)."""
        return self._pending.unmatched

    async def start(self) -> None:
        sub = await self.bus.subscribe(self.topics.agent_reply(self.gateway_id))
        self._task = asyncio.create_task(self._receive(sub))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def propose(self, request: AgentRequest, timeout: float | None = None) -> IssuedProposal:
        """Send the request to the agent workers and wait for its proposal (or `AgentError`)."""
        request = request.model_copy(update={"reply_to": self.topics.agent_reply(self.gateway_id)})
        fut = self._pending.expect(request.request_id)
        try:
            await self.bus.publish(self.topics.agent_request(), request.encode())
        except BaseException:
            self._pending.discard(request.request_id)
            raise
        try:
            return await self._pending.wait(
                request.request_id, fut, self.timeout if timeout is None else timeout, "the agent request"
            )
        except RequestTimeout as exc:
            raise AgentError(exc.text, ErrorCode.AGENT_TIMEOUT) from None

    async def _receive(self, sub: Any) -> None:
        async for received in sub:
            try:
                message = decode(received.payload)
            except ProtocolError as exc:
                log.warning("unreadable agent reply on %s: %s", received.topic, exc)
                await self._report(Error(code=exc.code, text=f"agent reply: {exc.text}", ref=received.topic))
                request_id = _request_id_of(received.payload)
                if request_id is not None:  # the request it answers fails now, with the reason, not by timeout
                    self._pending.fail(
                        request_id, AgentError(f"the proposal was refused: {exc.text}", ErrorCode.BAD_PROPOSAL)
                    )
                continue
            if isinstance(message, CheckoutProposal):
                self._pending.resolve(message.request_id, IssuedProposal(message, received.payload))
            elif isinstance(message, Error) and message.ref is not None:
                self._pending.fail(message.ref, AgentError(message.text, message.code))
            else:
                await self._report(Error(code=ErrorCode.UNEXPECTED_MESSAGE, text=f"agent reply of type {message.type}"))

    async def _report(self, error: Error) -> None:
        with contextlib.suppress(DeviceSdkError):
            await self.bus.publish(self.topics.errors(), error.encode())


def _request_id_of(payload: bytes) -> str | None:
    """The `request_id` a refused reply names, if it can be read at all (only to fail that request)."""
    try:
        data = strict_json.loads(payload)  # a key twice names no request: one reading or none
    except ProtocolError:
        return None
    request_id = data.get("request_id") if isinstance(data, dict) else None
    return request_id if isinstance(request_id, str) else None
