"""The fault matrix: one row per fault the emulator can switch on, each run as a user would (the
blocking facade, a real kernel for Ctrl-C and a restart), and every row held to the same checks
after its own: what the user saw (asserted in the row), nothing lost (the outputs saved byte for byte
as served, or the job findable), the paid submits the emulator saw and took, no sentinel secret in
the captured output, the logs, the journal file or a saved file, and no machine left running."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.emulator.faults import ODD_NAMES
from runcomfy_nb.journal import journal as the_journal

from ..helpers import downloaded, wait_for
from .kernels import Kernel

TOKEN = "rc_tok_FAULTMATRIX_SENTINEL_7c1e4b9a"
DEP = "dep-flux-kontext"
SUBMITS = ("/inference", "/prompt", "/servers")  # the paid POSTs: a serverless job, a prompt, a machine


@dataclass
class Row:
    """One row's world: the emulator, where it saves, and what the common checks need to know."""

    emu: Emulator
    out: Path
    capsys: pytest.CaptureFixture[str]
    secrets: list[str] = field(default_factory=list)  # machine URLs met on the way
    shown: list[str] = field(default_factory=list)  # texts the user saw (kernel output, reprs)
    posts: int = 1  # the paid POSTs the emulator should see
    taken: int = 1  # ... and the jobs it should have taken
    jobs: int = 0  # the deployment's jobs before the row
    journaled: bool = True  # a job was submitted, so the journal file exists

    def client(self, **settings: Any) -> rc.RunComfy:
        return rc.RunComfy(token=TOKEN, base_url=self.emu.url, user_id=self.emu.user_id, **settings)

    def served(self, url: str) -> bytes:
        """The bytes the emulator serves at an output URL (fetched without any credential)."""
        return httpx.get(url, timeout=10).raise_for_status().content


def _emulator() -> Emulator:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    return Emulator(speed=40, token=TOKEN, config=config)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with _emulator() as emulator:
        yield emulator


def _saved_as_served(row: Row, result: Any, urls: list[str] | None = None) -> list[Path]:
    """Save every output; each file holds exactly what the emulator served, inside `row.out`."""
    paths = result.save(row.out)
    assert len(paths) == len(result.media) and len(set(paths)) == len(paths)
    for media, path in zip(result.media, paths, strict=True):
        assert path.parent == row.out
        assert downloaded(path) == row.served(media.url)
    return paths


def _jobs(row: Row) -> list[Any]:
    return row.emu.requests_for(DEP)


def _only_entry(status: str) -> Any:
    entries = the_journal().entries()
    assert [e.status for e in entries] == [status], entries
    return entries[0]


# --- serverless rows ---------------------------------------------------------------------------
def rate_limit_retry_after(row: Row) -> None:
    row.emu.set_fault(DEP, "rate_limit", count=2, on="submit", retry_after=1)
    with row.client() as client:
        result = client.deployments.submit(DEP, {}).result(timeout=60)
        _saved_as_served(row, result)
    row.posts = 3  # two refused before acceptance, then the one taken
    assert _only_entry("succeeded").id == result.job_id


def rate_limit_burst_beyond_budget(row: Row) -> None:
    row.emu.set_fault(DEP, "rate_limit", count=-1, on="submit", retry_after=1)
    with row.client() as client, pytest.raises(rc.RateLimited, match="rate limiting") as raised:
        client.deployments.submit(DEP, {})
    assert raised.value.retry_after == 1
    row.posts, row.taken = 3, 0  # the retry budget (3 attempts under test), nothing taken
    assert not [e for e in the_journal().entries() if e.active]


def _server_error(status: int) -> Callable[[Row], None]:
    def server_error(row: Row) -> None:
        row.emu.set_fault(DEP, "http_error", on="submit", status=status, message="upstream failed")
        with row.client() as client, pytest.raises(rc.ServerError, match="upstream failed") as raised:
            client.deployments.submit(DEP, {})
        assert raised.value.status == status
        row.taken = 0  # refused before it was taken, and never resent
        assert not [e for e in the_journal().entries() if e.active]

    return server_error


def _uncertain(row: Row, **fault: Any) -> None:
    with row.client(**fault.pop("settings", {})) as client:
        row.emu.set_fault(DEP, **fault)
        with pytest.raises(rc.SubmitUncertain, match="NOT sent again") as raised:
            client.deployments.submit(DEP, {})
    row.shown.append(str(raised.value))
    entry = _only_entry("unknown")
    assert entry.note and entry.target == DEP


def connection_reset_before_submit(row: Row) -> None:
    _uncertain(row, fault="drop", on="submit", before=True)
    row.taken = 0


def connection_reset_after_submit(row: Row) -> None:
    _uncertain(row, fault="drop", on="submit")
    assert len(_jobs(row)) == row.jobs + 1  # the job whose reply was lost is there


def read_timeout_after_submit(row: Row) -> None:
    _uncertain(row, fault="delay", on="submit", seconds=1.5, settings={"timeout": 0.4})


def http_200_error_body_on_submit(row: Row) -> None:
    row.emu.set_fault(DEP, "body_error", on="submit")
    with row.client() as client, pytest.raises(rc.PaymentRequired, match="InsufficientFunds"):
        client.deployments.submit(DEP, {})
    row.taken = 0  # refused in a 200, and never resent
    assert not [e for e in the_journal().entries() if e.active]


def http_200_error_body_on_poll(row: Row) -> None:
    row.emu.set_fault(DEP, "body_error", count=2, on="status", error_code="internal_error",
                      message="try again")
    with row.client() as client:
        result = client.deployments.submit(DEP, {}).result(timeout=60)
        _saved_as_served(row, result)


def _truncated(row: Row, *, ranges: bool) -> list[int]:
    """Save a result whose first download is cut halfway (from a server that ignores Range unless
    `ranges`); the statuses its file was answered with."""
    with row.client() as client:
        result = client.deployments.submit(DEP, {}).result(timeout=60)
        first = result.media[0]
        row.emu.set_fault("*", "truncate", count=1)
        if not ranges:
            row.emu.set_fault("*", "no_range", count=-1)
        start = len(row.emu.log)
        path = first.save(row.out)
    statuses = [r.status for r in row.emu.log[start:] if first.url.endswith(r.path)]
    row.emu.clear_faults()
    assert downloaded(path) == row.served(first.url)
    return statuses


def truncated_and_resumed_download(row: Row) -> None:
    assert _truncated(row, ranges=True) == [0, 206]  # cut, then the rest by Range


def truncated_download_without_range(row: Row) -> None:
    assert _truncated(row, ranges=False) == [0, 200]  # Range ignored there: the whole file again


def odd_output_names_serverless(row: Row) -> None:
    row.emu.set_fault(DEP, "odd_names")
    with row.client() as client:
        result = client.deployments.submit(DEP, {}).result(timeout=60)
        assert len(result.media) == len(ODD_NAMES)
        paths = _saved_as_served(row, result)
    names = [p.name for p in paths]
    assert all(len(n.encode()) <= 255 and n not in (".", "..") and "\x00" not in n for n in names)
    assert "CON.png" not in names and not (row.out.parent.parent / "evil.png").exists()
    assert names[0] == "evil.png" and names[-1].endswith(".png")  # the traversal cut to its name


# --- a machine and its ComfyUI -------------------------------------------------------------------
def _on_a_machine(row: Row, fault: str, on: str) -> tuple[Any, Any]:
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    with row.client() as client:
        machine = client.machines.launch(version, server_type="medium", duration="30m")
        try:
            machine.wait_ready(timeout=30, poll=0.05)
            url = row.emu.comfy_url(machine.id)
            assert url
            row.secrets.append(url)
            row.emu.set_fault(machine.id, fault, on=on)
            comfy = machine.comfyui()
            result = comfy.queue(row.emu.machine_workflow(version)).result(timeout=60)
            paths = _saved_as_served(row, result)
            assert not row.emu.state.faults.armed(), f"the run met {fault}"
            comfy.aclose()
        finally:
            machine.stop()
    row.posts = row.taken = 2  # the machine's launch and the prompt
    return result, paths


def websocket_dropped_mid_run(row: Row) -> None:
    result, paths = _on_a_machine(row, "ws_drop", "ws")
    assert len(result.media) == 2 and len(paths) == 2  # recovered from /history


def odd_output_names_comfyui(row: Row) -> None:
    result, paths = _on_a_machine(row, "odd_names", "run")
    assert len(result.media) == len([n for n in ODD_NAMES if ".." not in n and "\x00" not in n])
    assert "CON.png" not in [p.name for p in paths] and all(p.parent == row.out for p in paths)


def machine_never_ready(row: Row) -> None:
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    row.emu.set_fault(version, "never_ready")
    with row.client() as client:
        machine = client.machines.launch(version, server_type="medium", duration="30m")
        with pytest.raises(rc.JobTimeout) as raised:
            machine.wait_ready(timeout=1.5, poll=0.05)
    row.shown.append(str(raised.value))
    record = next(m for m in row.emu.machines() if m["server_id"] == machine.id)
    assert record["status"] in ("Deleting", "Deleted") and record["billed_seconds"] == 0
    row.taken, row.journaled = 1, False  # the launch; no job


# --- a real kernel: Ctrl-C and a restart ---------------------------------------------------------
SUBMIT = ("import runcomfy_nb as rc\n"
          "client = rc.RunComfy()\n"
          f"job = client.deployments.submit({DEP!r}, {{}})\n"
          "print('SUBMITTED', job.id, flush=True)\n")


def ctrl_c_cancels_the_remote_job(row: Row) -> None:
    row.emu.set_fault(DEP, "slow_queue", seconds=100_000)
    kernel = Kernel(row.emu, TOKEN, row.shown)
    try:
        msg_id = kernel.start(SUBMIT + "job.result()\n")
        job_id = kernel.output(msg_id, "SUBMITTED").split("SUBMITTED", 1)[1].split()[0]
        wait_for(lambda: [r for r in row.emu.log if r.path.endswith(f"/{job_id}/status")],
                 what="the cell waiting in job.result()")  # Ctrl-C there, not in the print
        kernel.manager.interrupt_kernel()
        seen = kernel.output(msg_id)
        assert "KeyboardInterrupt" in seen, seen
        # by the time the cell ended, the server had cancelled the job
        assert next(r for r in _jobs(row) if r.id == job_id).status == "cancelled", seen
        assert the_journal().find(job_id).status == "cancelled"
    finally:
        kernel.close()


def kernel_restart_mid_job(row: Row) -> None:
    row.emu.set_fault(DEP, "slow_queue", seconds=200)  # 5 s real at speed 40: longer than a restart
    kernel = Kernel(row.emu, TOKEN, row.shown)
    try:
        seen = kernel.output(kernel.start(SUBMIT))
        job_id = seen.split("SUBMITTED", 1)[1].split()[0]
        kernel.restart()
        remote = next(r for r in _jobs(row) if r.id == job_id)
        assert remote.status in ("in_queue", "in_progress")  # the restart left it running there
        seen = kernel.output(kernel.start(
            "import runcomfy_nb as rc\n"
            f"result = rc.RunComfy().attach({job_id[:8]!r}).result(timeout=60)\n"
            f"print('SAVED', *[p.name for p in result.save({str(row.out)!r})])\n"))
        assert "SAVED" in seen, seen
    finally:
        kernel.close()
    entry = _only_entry("succeeded")
    assert entry.id == job_id
    remote = next(r for r in _jobs(row) if r.id == job_id)
    served = {i["filename"]: row.served(i["url"].format(origin=row.emu.url))
              for i in remote.outputs["9"]["images"]}
    assert {p.name: downloaded(p) for p in row.out.iterdir()} == served


# --- the emulator killed and restarted -----------------------------------------------------------
def emulator_killed_and_restarted(row: Row) -> None:
    row.emu.set_fault(DEP, "slow_queue", seconds=20)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUNCOMFY_CONTACT_TIMEOUT", "1")
        with row.client() as client:
            job = client.deployments.submit(DEP, {})
            assert not _jobs(row)[-1].done  # killed mid-run
            row.emu.kill()
            with pytest.raises(rc.ContactLost, match="attach") as raised:
                job.result(timeout=60)
            row.shown.append(str(raised.value))
            row.emu.start()
            result = client.attach(job.id[:8]).result(timeout=60)
            _saved_as_served(row, result)
        assert result.job_id == job.id and _only_entry("succeeded").id == job.id


ROWS: dict[str, Callable[[Row], None]] = {
    "rate_limit_retry_after": rate_limit_retry_after,
    "rate_limit_burst_beyond_budget": rate_limit_burst_beyond_budget,
    "server_error_500": _server_error(500),
    "server_error_502": _server_error(502),
    "server_error_503": _server_error(503),
    "connection_reset_before_submit": connection_reset_before_submit,
    "connection_reset_after_submit": connection_reset_after_submit,
    "read_timeout_after_submit": read_timeout_after_submit,
    "http_200_error_body_on_submit": http_200_error_body_on_submit,
    "http_200_error_body_on_poll": http_200_error_body_on_poll,
    "websocket_dropped_mid_run": websocket_dropped_mid_run,
    "truncated_and_resumed_download": truncated_and_resumed_download,
    "truncated_download_without_range": truncated_download_without_range,
    "odd_output_names_serverless": odd_output_names_serverless,
    "odd_output_names_comfyui": odd_output_names_comfyui,
    "machine_never_ready": machine_never_ready,
    "ctrl_c_cancels_the_remote_job": ctrl_c_cancels_the_remote_job,
    "kernel_restart_mid_job": kernel_restart_mid_job,
    "emulator_killed_and_restarted": emulator_killed_and_restarted,
}
OWN_EMULATOR = {"emulator_killed_and_restarted"}


def _counts(emu: Emulator, start: int, before: tuple[int, int]) -> tuple[int, int]:
    """The paid POSTs since `start` in the request log, and the jobs the emulator took since
    `before` (its serverless requests and machines then): the prompts it answered count too."""
    paid = [r for r in emu.log[start:] if r.method == "POST" and r.path.endswith(SUBMITS)]
    prompts = sum(1 for r in paid if r.path.endswith("/prompt") and r.status == 200)
    jobs, machines = _taken(emu)
    return len(paid), jobs - before[0] + machines - before[1] + prompts


def _taken(emu: Emulator) -> tuple[int, int]:
    return sum(len(emu.requests_for(d)) for d in emu.deployment_ids()), len(emu.machines())


def _common_checks(row: Row, start: tuple[int, tuple[int, int]], journal: Path,
                   caplog: pytest.LogCaptureFixture) -> None:
    posts, taken = _counts(row.emu, *start)
    assert (posts, taken) == (row.posts, row.taken), "paid POSTs seen, taken"
    out = row.capsys.readouterr()
    texts = [out.out, out.err, *row.shown, *(r.getMessage() for r in caplog.records)]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    assert journal.exists() or not row.journaled, "the journal was written"
    blobs = [p.read_bytes() for p in journal.parent.glob(journal.name + "*")]
    blobs += [p.read_bytes() for p in row.out.parent.rglob("*") if p.is_file()]
    for secret in (TOKEN, *row.secrets):
        assert all(secret not in text for text in texts), f"{secret[:12]}… in an output or log"
        assert all(secret.encode() not in blob for blob in blobs), f"{secret[:12]}… in a file"
    running = [m["server_id"][:8] for m in row.emu.machines() if m["status"] not in ("Deleting", "Deleted")]
    assert not running, f"machines left running: {running}"


@pytest.mark.parametrize("name", list(ROWS))
def test_fault(name: str, emu: Emulator, tmp_path: Path, journal: Path, debug_logs: pytest.LogCaptureFixture,
               capsys: pytest.CaptureFixture[str]) -> None:
    emulator = _emulator().__enter__() if name in OWN_EMULATOR else emu
    try:
        emulator.clear_faults()
        start = len(emulator.log), _taken(emulator)
        row = Row(emulator, tmp_path / "out", capsys, jobs=len(emulator.requests_for(DEP)))
        row.out.mkdir()
        ROWS[name](row)
        _common_checks(row, start, journal, debug_logs)
    finally:
        emulator.clear_faults()
        if emulator is not emu:
            emulator.stop()
