"""docs/asyncapi.yaml: current (what `device-sdk asyncapi` prints now), valid against the AsyncAPI 3.0
JSON Schema (tests/data, from @asyncapi/specs), every message once, every reference resolving; and
valid for `@asyncapi/cli validate` where Node and the CLI are installed."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from device_sdk.cli import main
from device_sdk.protocol.asyncapi import render
from device_sdk.protocol.messages import MESSAGE_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncapi.yaml"
SCHEMA = json.loads((Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json").read_text())


def checked_in() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return loaded


def errors(doc: dict[str, Any]) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_checked_in_document_is_what_the_command_prints_now() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["asyncapi"]) == 0
    assert out.getvalue() == render()
    assert DOC.read_text(encoding="utf-8") == out.getvalue(), "run: device-sdk asyncapi > docs/asyncapi.yaml"


def test_the_document_is_valid_asyncapi_3() -> None:
    doc = checked_in()
    assert doc["asyncapi"] == "3.0.0"
    assert errors(doc) == []


def test_the_schema_does_refuse_a_document_that_is_not_asyncapi_3() -> None:
    doc = checked_in()
    broken = copy.deepcopy(doc)
    broken["operations"]["send_deviceUp"]["action"] = "publish"  # the 2.x word
    assert errors(broken)
    broken = copy.deepcopy(doc)
    del broken["channels"]["deviceDown"]["address"]
    broken["channels"]["deviceDown"]["topic"] = "shop/v1/device/{device_id}/down"  # no such field in 3.0
    assert errors(broken)


def test_every_message_is_there_once_with_its_payload_and_every_reference_resolves() -> None:
    doc = checked_in()
    messages = doc["components"]["messages"]
    tags = [str(model.model_fields["type"].default) for model in MESSAGE_TYPES]
    assert len(set(tags)) == len(tags) and set(tags) <= set(messages)
    for tag, model in zip(tags, MESSAGE_TYPES, strict=True):
        payload = resolve(doc, messages[tag]["payload"]["$ref"])
        assert payload["properties"]["type"]["const"] == tag
        assert set(payload.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
    assert len(doc["channels"]) >= 5
    families = {channel["address"].split("/")[2] for channel in doc["channels"].values()}
    assert {"device", "gateway", "agent", "errors", "oem"} <= families
    carried = set()
    for name, operation in doc["operations"].items():
        channel = resolve(doc, operation["channel"]["$ref"])
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/"), name
            message = resolve(doc, resolve(doc, ref["$ref"])["$ref"])
            assert message in messages.values()
            carried.add(message["name"])
        assert "{" not in channel["address"] or channel["parameters"]
    assert carried == set(messages)  # every message travels on some channel
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        resolve(doc, ref)


def _asyncapi_cli() -> list[str] | None:
    """The AsyncAPI CLI: `asyncapi` on PATH, or installed under $ASYNCAPI_CLI_DIR (npm install @asyncapi/cli)."""
    if shutil.which("asyncapi"):
        return ["asyncapi"]
    local = Path(os.environ.get("ASYNCAPI_CLI_DIR", "/nonexistent")) / "node_modules" / ".bin" / "asyncapi"
    return [str(local)] if local.exists() else None


def test_the_asyncapi_cli_validates_the_document(tmp_path: Path) -> None:
    cli = _asyncapi_cli()
    if cli is None or shutil.which("node") is None:
        pytest.skip("no AsyncAPI CLI here (npm install @asyncapi/cli, then set ASYNCAPI_CLI_DIR): see docs/partners.md")
    env = {**os.environ, "HOME": str(tmp_path), "ASYNCAPI_METRICS": "false", "NO_COLOR": "1"}
    done = subprocess.run([*cli, "validate", str(DOC)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr
