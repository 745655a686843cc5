"""A simulated user in front of a simulated microphone: the room is silent until the user speaks.

`RoomSource` is an audio source that yields silence, and the user's speech when `speak` queued
some, in blocks of 1,024 samples (64 ms): with `realtime` at the pace of a live microphone;
by default speech as fast as it is read and silence at 20 times real time, so timeouts counted
in samples still pass while the pipeline waits on the network. Then each utterance starts on a
grid of 0.96 s, so how long the network took does not move the speech against the endpointer's
frames, and a run hears the same audio every time. `sample_time(n)` tells when sample `n` was
delivered, for latency measurements.

`VoiceUser` speaks a command, then its replies each time the device finishes talking: it is the
`output` of the device's `Voice`, so it "hears" the read-back end as a person would.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from device_sdk.device.client import DeviceClient
from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.voice.assistant import Button, Voice, VoiceAssistant, VoiceConfig, VoiceRun
from device_sdk.voice.engines import Hearing
from device_sdk.voice.grammar import Vocabulary
from device_sdk.voice.sources import RATE, Pcm

_BLOCK = 1024  # 64 ms, as Wyoming sends
_GRID = 15 * _BLOCK
"""0.96 s: a whole number of blocks and of 10, 20 and 30 ms endpointer frames."""


class RoomSource:
    def __init__(self, *, realtime: bool = False, idle_speed: float = 20.0, lead_in_s: float = 0.3) -> None:
        self.realtime = realtime
        self.idle_speed = idle_speed
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._times: list[tuple[int, float]] = []  # (sample, monotonic time it was delivered)
        self.position = 0
        self.closed = False
        self._lead_in = round(lead_in_s * RATE) * 2
        self.spoken: list[tuple[int, int]] = []
        """(first, end) samples of each queued utterance, as placed on the timeline."""

    def speak(self, pcm: bytes) -> None:
        """Queue speech after whatever is queued, with a short silence before it."""
        self._queue.append(b"\x00" * self._lead_in + pcm)
        self._wake.set()

    def close(self) -> None:
        """End the stream once the speech already queued has been played."""
        self.closed = True
        self._wake.set()

    def sample_time(self, sample: int) -> float:
        """`time.monotonic()` when `sample` was delivered (interpolated within its block)."""
        for end, at in self._times:
            if end >= sample:
                return at
        raise ValueError(f"sample {sample} was not delivered")

    async def __aiter__(self) -> AsyncIterator[Pcm]:
        pending = b""
        started = time.monotonic()
        while not (self.closed and not pending and not self._queue):
            if not pending and self._queue and (self.realtime or self.position % _GRID == 0):
                pending = self._queue.popleft()
                first = self.position + self._lead_in // 2
                self.spoken.append((first, self.position + len(pending) // 2))
            if self.realtime:
                await asyncio.sleep(max(0.0, started + self.position / RATE - time.monotonic()))
            elif pending or self._queue:
                await asyncio.sleep(0)
            else:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), _BLOCK / RATE / self.idle_speed)
                    continue  # speech arrived: play it now rather than more silence
                except TimeoutError:
                    pass
            block, pending = pending[: _BLOCK * 2], pending[_BLOCK * 2 :]
            yield Pcm(self.position, block.ljust(_BLOCK * 2, b"\x00"))
            self.position += _BLOCK
            self._times.append((self.position, time.monotonic()))


@dataclass
class SimulatedButton:
    """A speaker's button and the user's thumb: pressed when the device asks for it (`press`), or
    never. The user decides at once, so a case that does not press costs no waiting."""

    press: bool = False
    offered: int = 0

    async def pressed(self, timeout: float) -> bool:
        self.offered += 1
        await asyncio.sleep(0)
        return self.press


def questions(locale: str) -> tuple[str, ...]:
    """What the device asks in `locale` that its user answers: the read-back, and the PIN after it."""
    data = locale_for(locale)
    return data.readback.answer, data.voice.say_pin, data.voice.pin_unheard, data.voice.pin_wrong


@dataclass
class VoiceUser:
    """Says `command` at once, then one reply from `replies` each time the device stops talking."""

    room: RoomSource
    command: bytes
    replies: Sequence[bytes]
    realtime: bool = False
    prompts: tuple[str, ...] = field(default_factory=lambda: questions(DEFAULT_LOCALE))
    """How the device's questions end (the read-back's, the PIN's): what the user answers."""
    heard: list[str] = field(default_factory=list)
    _next: int = 0

    def start(self) -> None:
        self.room.speak(self.command)

    async def output(self, text: str, pcm: bytes | None) -> None:
        """The device's loudspeaker: the user listens to the end, then answers if it was a question."""
        self.heard.append(text)
        if self.realtime and pcm is not None:
            await asyncio.sleep(len(pcm) / 2 / RATE)
        if text.endswith(self.prompts) and self._next < len(self.replies):
            self.room.speak(self.replies[self._next])
            self._next += 1


async def converse(
    device: DeviceClient,
    hearing: Hearing,
    vocabulary: Vocabulary,
    command: bytes,
    replies: Sequence[bytes],
    *,
    realtime: bool = False,
    present: Callable[[str], None] | None = None,
    config: VoiceConfig | None = None,
    button: Button | None = None,
) -> tuple[VoiceRun, VoiceUser]:
    """One voice session in a room: the user says `command`, then a reply each time the device
    asks; the device's `VoiceAssistant` hears them with `hearing`. `present` sees each prompt as
    it is said."""
    room = RoomSource(realtime=realtime)
    user = VoiceUser(room, command, replies, realtime=realtime, prompts=questions(device.locale))

    async def output(text: str, pcm: bytes | None) -> None:
        if present is not None:
            present(text)
        await user.output(text, pcm)

    voice = Voice(output=output, synthesize=realtime)  # a read-back takes its time only in real time
    async with VoiceAssistant.with_hearing(
        device, hearing, vocabulary, room, voice=voice, config=config, button=button
    ) as assistant:
        user.start()
        try:
            return await assistant.session(), user
        finally:
            room.close()
