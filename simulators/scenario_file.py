"""Scenario files: a household in YAML (its devices, what each user says and answers, faults), with the
outcome expected of every step; `device-sdk simulate scenario FILE` runs one (`household`).

    name: a speaker order
    devices:
      - {id: kitchen-speaker, kind: speaker, room: kitchen}
    steps:
      - device: kitchen-speaker
        say: buy two packs of AA batteries
        answer: [confirm]
        expect: {outcome: ordered, readback_contains: AA batteries, orders: 1}
      - fault: broker_restart
        expect: {reconnected: true}

A file that is not YAML, has a key twice, misses a field, names a field or device there is no such
thing as, or gives a step what its device cannot do is refused with a `ScenarioError` that names the
file and the line (docs/partners.md has every field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from device_sdk.locale import LOCALES
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.wire_errors import first_error

from .catalog import demo_catalog

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Kind = Literal["speaker", "glasses", "phone"]
FAULTS = ("broker_restart",)


class ScenarioError(ConfigError):
    """A scenario file that cannot be run: `path:line: what is wrong`."""

    def __init__(self, path: str | Path, line: int | None, text: str) -> None:
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {text}" if line is not None else f"{path}: {text}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Strict):
    """One device of the household, provisioned as its kind (and partner and model, if given)."""

    id: Id
    kind: Kind
    locale: str | None = None
    room: Id | None = None
    partner: Id | None = None
    model: Id | None = None

    @model_validator(mode="after")
    def _check(self) -> DeviceSpec:
        if self.locale is not None and self.locale not in LOCALES:
            raise ValueError(f"locale {self.locale!r} is not one of {', '.join(LOCALES)}")
        if (self.partner is None) != (self.model is None):
            raise ValueError("partner and model go together")
        return self


class Heard(_Strict):
    """How one device heard a wake word."""

    confidence: Annotated[float, Field(ge=0, le=1)] = 0.9
    loudness: Annotated[float, Field(ge=-120, le=0)] = -30.0
    """dBFS: the louder (nearer) device wins among about as confident ones."""


class Expect(_Strict):
    """What the step must give; each field given is checked."""

    outcome: str | None = None
    """ordered, declined, not_confirmed, expired, ... (`order.result` / `intent.result`)."""
    error: str | None = None
    """The error code the step ends with (not_chosen, ...)."""
    orders: Annotated[int, Field(ge=0)] | None = None
    """Orders the household placed so far, this step's included."""
    total_minor: Annotated[int, Field(ge=0)] | None = None
    readback_contains: str | None = None
    card_contains: str | None = None
    sheet_contains: str | None = None
    winner: Id | None = None
    granted: Annotated[int, Field(ge=0)] | None = None
    """How many of the devices that heard the wake word were given the session."""
    reconnected: bool | None = None


class Step(_Strict):
    """One step: a device's user asks (`say`) and answers (`answer`, `tap`, `sheet`), or devices hear a
    wake word (`wake`), or a fault happens (`fault`)."""

    device: Id | None = None
    say: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    answer: list[str] | None = None
    look_at: Id | None = None
    tap: Literal["confirm", "cancel", "none"] | None = None
    sheet: Literal["confirm", "cancel", "none", "unavailable"] | None = None
    via: Literal["bus", "http"] | None = None
    wake: dict[Id, Heard] | None = None
    fault: Literal["broker_restart"] | None = None
    expect: Expect

    @model_validator(mode="after")
    def _check(self) -> Step:
        kinds = [name for name, given in (("say", self.say), ("wake", self.wake), ("fault", self.fault)) if given]
        if len(kinds) != 1:
            raise ValueError("a step has one of say (with device), wake or fault")
        if self.say is not None and self.device is None:
            raise ValueError("say needs the device that hears it")
        if self.wake is not None and len(self.wake) < 1:
            raise ValueError("wake names the devices that heard it")
        if not self.expect.model_dump(exclude_none=True):
            raise ValueError("expect names at least one outcome to check")
        return self


class Scenario(_Strict):
    name: str
    locale: str = "en-US"
    """The default locale of the devices."""
    devices: Annotated[list[DeviceSpec], Field(min_length=1)]
    steps: Annotated[list[Step], Field(min_length=1)]


USES = {"answer": "speaker", "tap": "glasses", "sheet": "phone", "via": "phone"}
"""The step fields only one kind of device takes."""


def load_scenario(path: str | Path) -> Scenario:
    """The scenario in the YAML file at `path`, or `ScenarioError` naming the line of what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(path, None, f"cannot read it: {exc}") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader that keeps line numbers
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ScenarioError(path, mark.line + 1 if mark else None, f"not YAML: {exc.problem}") from None
    except _Duplicate as exc:
        raise ScenarioError(path, exc.line, f"{exc.key!r} is given twice") from None
    if not isinstance(data, dict):
        raise ScenarioError(path, 1, "a scenario is a mapping with name, devices and steps")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors(include_url=False)[0]["loc"]
        raise ScenarioError(path, _line_of(data, loc), first_error(exc)) from None
    _check_devices(path, scenario, data)
    return scenario


def _check_devices(path: Path, scenario: Scenario, data: Any) -> None:
    kinds: dict[str, str] = {}
    for n, spec in enumerate(scenario.devices):
        if spec.id in kinds:
            raise ScenarioError(path, _line_of(data, ("devices", n, "id")), f"device {spec.id!r} twice")
        kinds[spec.id] = spec.kind
    for n, step in enumerate(scenario.steps):
        named = [step.device] if step.device is not None else []
        for device in [*named, *(step.wake or {})]:
            if device not in kinds:
                where = ("steps", n, "device") if device == step.device else ("steps", n, "wake", device)
                raise ScenarioError(path, _line_of(data, where), f"no device {device!r} in devices")
        for field, kind in USES.items():
            if getattr(step, field) is not None and (step.device is None or kinds[step.device] != kind):
                raise ScenarioError(path, _line_of(data, ("steps", n, field)), f"{field} is for a {kind}")
        if step.look_at is not None and (step.device is None or kinds[step.device] == "speaker"):
            raise ScenarioError(path, _line_of(data, ("steps", n, "look_at")), "look_at is for glasses or a phone")
        if step.look_at is not None and demo_catalog().product(step.look_at) is None:
            raise ScenarioError(path, _line_of(data, ("steps", n, "look_at")), f"no product {step.look_at!r}")
        for device in step.wake or {}:
            if kinds[device] != "speaker":
                raise ScenarioError(path, _line_of(data, ("steps", n, "wake", device)), "wake is for speakers")


class _Duplicate(Exception):
    def __init__(self, key: object, line: int) -> None:
        self.key, self.line = key, line


class _Mapping(dict[Any, Any]):
    """A YAML mapping that knows its line and the line of each key."""

    line = 0
    lines: dict[Any, int]


class _Sequence(list[Any]):
    line = 0
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """PyYAML's safe loader, keeping where each mapping, key and list item starts, refusing a key twice."""


def _mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    out = _Mapping()
    out.line, out.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise _Duplicate(key, key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    out = _Sequence(loader.construct_object(item, deep=True) for item in node.value)
    out.line, out.lines = node.start_mark.line + 1, [item.start_mark.line + 1 for item in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _line_of(data: Any, loc: tuple[int | str, ...]) -> int:
    """The line of the deepest part of `loc` (a validation error's path) that the file has."""
    line, node = getattr(data, "line", 1), data
    for part in loc:
        found = isinstance(node, _Mapping) and part in node
        found = found or (isinstance(node, _Sequence) and isinstance(part, int) and 0 <= part < len(node))
        if not found:
            break
        line, node = node.lines[part], node[part]
    return line
