"""Scenario files: every example in examples/scenarios/ runs on the simulators with each step as it
expects; a step that goes otherwise fails the run; a file that cannot be run is refused naming its line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from device_sdk.cli import console, main
from simulators.household import run_scenario
from simulators.scenario_file import ScenarioError, load_scenario

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "scenarios").glob("*.yaml"))


def test_there_are_the_five_examples() -> None:
    assert [p.stem for p in EXAMPLES] == [
        "glasses-lookup", "phone-sheet", "speaker-order", "two-speakers-wake", "zh-cn-order"
    ]  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_every_example_runs_with_each_step_as_it_expects(path: Path) -> None:
    scenario = load_scenario(path)
    report = await run_scenario(scenario)
    assert [step.missed for step in report.steps] == [[] for _ in scenario.steps]
    assert report.ok and len(report.steps) == len(scenario.steps) >= 2
    for step, done in zip(scenario.steps, report.steps, strict=True):  # each expectation was looked at
        for name in step.expect.model_dump(exclude_none=True):
            assert name.removesuffix("_contains") in done.got or name in done.got, (path.stem, name)


SPEAKER = """\
name: one order
devices:
  - {id: s-1, kind: speaker}
steps:
  - device: s-1
    say: buy a bag of rice
    answer: [confirm]
    expect: {outcome: EXPECTED, orders: 1}
"""


async def test_a_step_that_goes_otherwise_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(SPEAKER.replace("EXPECTED", "declined"), encoding="utf-8")
    report = await run_scenario(load_scenario(wrong))
    assert not report.ok
    assert report.steps[0].got["outcome"] == "ordered"
    assert report.steps[0].missed == ["expected outcome 'declined', got 'ordered'"]
    right = tmp_path / "right.yaml"
    right.write_text(SPEAKER.replace("EXPECTED", "ordered"), encoding="utf-8")
    assert await asyncio.to_thread(main, ["simulate", "scenario", str(right)]) == 0
    assert await asyncio.to_thread(main, ["simulate", "scenario", str(wrong)]) == 1
    assert "FAIL step 1" in capsys.readouterr().out


BAD = [
    ("name: x\ndevices: [\n  {id: a, kind: speaker}\nsteps: []\n", 4, "not YAML"),
    ("name: x\nname: y\n", 2, "'name' is given twice"),
    (SPEAKER.replace("    say:", "    sya:"), 6, "sya"),
    (SPEAKER.replace("    expect: {outcome: EXPECTED, orders: 1}\n", ""), 5, "expect"),
    (SPEAKER.replace("device: s-1", "device: s-2"), 5, "no device 's-2'"),
    (SPEAKER.replace("answer: [confirm]", "tap: confirm"), 7, "tap is for a glasses"),
    (SPEAKER.replace("kind: speaker", "kind: toaster"), 3, "kind"),
    (SPEAKER.replace("{id: s-1, kind: speaker}", "{id: s-1, kind: speaker, locale: fr-FR}"), 3, "fr-FR"),
    (SPEAKER.replace("{outcome: EXPECTED, orders: 1}", "{orders: -1}"), 8, "orders"),
    (SPEAKER.replace("{outcome: EXPECTED, orders: 1}", "{}"), 5, "expect names at least one"),
    (SPEAKER.replace("    answer: [confirm]\n", "    wake: {s-1: {}}\n"), 5, "one of say"),
    ("- just a list\n", 1, "a scenario is a mapping"),
]


@pytest.mark.parametrize(("text", "line", "says"), BAD)
def test_a_bad_scenario_file_is_refused_naming_its_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as refused:
        load_scenario(path)
    assert refused.value.line == line, refused.value.text
    assert says in refused.value.text
    assert refused.value.text.startswith(f"{path}:{line}: ")


def test_the_command_refuses_a_bad_file_with_its_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEAKER.replace("look_at", "x").replace("answer: [confirm]", "look_at: bat-aa-4"), encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        console(lambda: main(["simulate", "scenario", str(path)]), "device-sdk")
    assert exited.value.code == 2
    assert f"{path}:7: look_at is for glasses or a phone" in capsys.readouterr().err
