"""Machine magics in a real IPython shell, and the kernel-exit hook in a real kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.magics.session import SESSION

from ..helpers import TOKEN, wait_for


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    yield  # real stamina waits: the Server API's 429 asks us to wait


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "runcomfy_nb")
    shell.run_line_magic("runcomfy", "emulate --speed 60")
    yield shell
    shell.run_line_magic("runcomfy", "emulate --stop")


def cell(ip: InteractiveShell, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[bool, str]:
    result = ip.run_cell(text)
    out = capsys.readouterr()
    return result.success, out.out + out.err


def test_launch_extend_stop(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ok, text = cell(ip, "%runcomfy workflows", capsys)
    assert ok
    versions = [w.version_id for w in SESSION.client.machines.workflows()]
    assert versions and all(v in text for v in versions), text
    ok, text = cell(ip, f"%runcomfy launch {versions[0]} --type medium --duration 10m --wait --out m",
                    capsys)
    assert ok and "bills from Ready until stopped" in text and "is ready" in text, text
    machine = ip.user_ns["m"]
    url = SESSION.emulator.comfy_url(machine.id)
    assert url and url not in text
    ok, text = cell(ip, "%runcomfy machines", capsys)
    assert ok and machine.id[:8] in text and "ready" in text and url not in text
    ok, text = cell(ip, f"%runcomfy extend {machine.id[:8]} 30m", capsys)
    assert ok and "0.67 h" in text
    ok, text = cell(ip, f"%runcomfy stop {machine.id[:8]}", capsys)
    assert ok and "billing has ended" in text


@pytest.mark.parametrize(("line", "message"), [
    ("%runcomfy launch x --type huge", "Unknown server_type"),
    ("%runcomfy launch x --duration 30y", "Cannot read the duration"),
    ("%runcomfy launch nope --duration 10m", "No workflow version"),
    ("%runcomfy extend onlyone", "Usage"),
    ("%runcomfy stop", "Usage"),
])
def test_machine_input_errors(ip: InteractiveShell, capsys: pytest.CaptureFixture[str], line: str,
                              message: str) -> None:
    ok, text = cell(ip, line, capsys)
    assert not ok and message in text and "Traceback" not in text


def test_stop_all(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    versions = [w.version_id for w in SESSION.client.machines.workflows()]
    cell(ip, f"%runcomfy launch {versions[0]} --type medium --duration 10m", capsys)
    ok, text = cell(ip, "%runcomfy stop --all", capsys)
    assert ok and "Stopped 1 machine" in text


def test_kernel_exit_stops_its_machines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from jupyter_client.manager import start_new_kernel

    with Emulator(speed=60.0, token=TOKEN) as emu:
        env = {"RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": emu.url, "RUNCOMFY_USER_ID": emu.user_id}
        km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, **env}, cwd=str(tmp_path))
        try:
            code = ("%load_ext runcomfy_nb\nfrom runcomfy_nb.magics.session import SESSION\n"
                    "v = SESSION.client.machines.workflows()[0].version_id\n"
                    "%runcomfy launch {v} --type medium --duration 2h\n"
                    "%runcomfy launch {v} --type medium --duration 2h --keep")
            reply = kc.execute_interactive(code, timeout=60)
            assert reply["content"]["status"] == "ok"
            assert len(emu.machines()) == 2
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        wait_for(lambda: len([m for m in emu.machines() if m["status"] in ("Starting", "Ready")]) == 1)
        running = [m for m in emu.machines() if m["status"] in ("Starting", "Ready")]
        assert len(running) == 1  # the one marked --keep


def test_prompt_on_a_machine(ip: InteractiveShell, capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from PIL import Image

    versions = [w.version_id for w in SESSION.client.machines.workflows()]
    ok, text = cell(ip, f"%runcomfy launch {versions[0]} --type medium --duration 1h --wait --out pm",
                    capsys)
    assert ok, text
    machine = ip.user_ns["pm"]
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(SESSION.emulator.machine_workflow(versions[0])))
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "red").save(picture)
    ok, text = cell(ip, "%%runcomfy prompt --workflow " + str(workflow) + " --upload " + str(picture)
                    + " --out pr\n31.seed = 5\nKSampler.steps = 3\n", capsys)
    assert ok, text
    result = ip.user_ns["pr"]
    assert result.images and SESSION.emulator.comfy_url(machine.id) not in text
    ok, text = cell(ip, f"%%runcomfy prompt --workflow {workflow} --out unchanged\n# as saved\n", capsys)
    assert ok and ip.user_ns["unchanged"].images, text  # a comment body: the file as it is
    ok, text = cell(ip, "%%runcomfy prompt\n31.seed = 5\n", capsys)
    assert not ok and "--workflow" in text and "Traceback" not in text
    ok, text = cell(ip, f"%runcomfy connect {machine.id[:8]}", capsys)
    assert ok and "ComfyUI target" in text
    ok, text = cell(ip, '%%runcomfy prompt\n{"1": {"class_type": "NoSuchNode", "inputs": {}}}\n', capsys)
    assert not ok and "NoSuchNode" in text and "Traceback" not in text
    cell(ip, f"%runcomfy stop {machine.id[:8]}", capsys)
