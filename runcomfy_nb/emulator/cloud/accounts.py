"""Comfy Cloud's accounts: their inference workers (comfyui's engine), jobs, queues and sockets."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import posixpath
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..comfyui import ComfyUI
from ..comfyui.nodes import IMAGE_EXTENSIONS
from ..comfyui.server import Item, NodeFailure, Run, Socket, annotated, send_to
from .settings import (
    ACCOUNT_DEFAULTS,
    CLOUD_ERRORS,
    DEFAULTS,
    MAX_UPLOAD,
    NOTIFICATION,
    PARTNER_NODE,
    PARTNER_UNAUTHORIZED,
    PHASES,
    STORAGE,
    TARGET,
    TIERS,
    VOCABULARIES,
    copy_settings,
    iso,
    ms,
    partner_schema,
)


class Worker(ComfyUI):
    """One inference worker of an account: the comfyui package's engine, its messages sent to every
    socket of the account, its files the account's flat store, its prompts the account's jobs."""

    def __init__(self, account: Account, name: str) -> None:
        cloud = account.cloud
        super().__init__(TARGET, cloud.state, cloud.settings, "2xl-turbo", [])
        self.account, self.name = account, name
        self.files = account.files
        self.configure(cloud.settings)

    def configure(self, settings: dict[str, Any]) -> None:
        """Take the cloud's settings: timings, previews, and the checkpoints (the presets' too)."""
        presets = [node["inputs"].get("ckpt_name") for preset in self.state.presets.values()
                   for node in preset.values() if node.get("class_type") == "CheckpointLoaderSimple"]
        self.checkpoints = sorted({*settings["checkpoints"], *filter(None, presets)})
        self.step_seconds = float(settings["step_seconds"])
        self.node_seconds = float(settings["node_seconds"])
        self.load_seconds = float(settings["load_seconds"])
        self.partner_seconds = float(settings["partner_seconds"])
        self.previews = bool(settings["previews"])

    # --- what differs from a machine's ComfyUI ---------------------------------------------
    def schemas(self) -> dict[str, dict[str, Any]]:
        return {**super().schemas(), PARTNER_NODE: partner_schema()}

    def input_images(self) -> list[str]:
        return sorted({posixpath.basename(path) for (_, path) in self.files
                       if path.lower().endswith(IMAGE_EXTENSIONS)})

    def exists(self, filename: str, default: str = "input") -> bool:
        return self.account.find(annotated(filename)[0]) is not None

    @staticmethod
    def features() -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD}

    def targets(self, sid: str | None) -> list[Socket]:
        return list(self.account.sockets)

    def client_of(self, item: Item) -> str | None:
        return item.prompt_id  # never None: every message is sent

    async def queue_updated(self) -> None:
        await self.account.send_status()

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        await self.account.finished(item, entry)

    async def _execute(self, run: Run) -> bool:
        await self.account.started(run.item)
        return await super()._execute(run)

    def _arm_faults(self, run: Run, order: list[str]) -> None:
        super()._arm_faults(run, order)
        raises = run.raises
        if raises is not None and raises.params.get("exception_type") in CLOUD_ERRORS:
            message = CLOUD_ERRORS[raises.params["exception_type"]]
            run.raises = copy.copy(raises)  # the armed fault keeps its own params
            run.raises.params = {"message": message, **raises.params}

    async def _run_node(self, run: Run, node_id: str, class_type: str,
                        inputs: dict[str, Any]) -> dict[str, Any] | None:
        if class_type != PARTNER_NODE:
            return await super()._run_node(run, node_id, class_type, inputs)
        self._check(run, node_id)
        given = str(run.item.sensitive.get("api_key_comfy_org", "")).encode()
        if not hmac.compare_digest(given, self.account.key.encode()):
            raise NodeFailure("Exception", PARTNER_UNAUTHORIZED)
        await self.state.clock.sleep(self.partner_seconds)
        self._check(run, node_id)
        return None


@dataclass(eq=False)
class Job:
    """One prompt of an account; times are wall-clock epochs."""

    item: Item = field(repr=False)
    account: Account = field(repr=False)
    created: float = field(default_factory=time.time)
    updated: float = 0.0
    phase: str = "waiting"  # see PHASES
    worker: Worker | None = field(default=None, repr=False)
    started: float | None = None
    ended: float | None = None
    entry: dict[str, Any] | None = field(default=None, repr=False)  # the history entry, once it ran

    def __post_init__(self) -> None:
        self.updated = self.created

    @property
    def id(self) -> str:
        return self.item.prompt_id

    @property
    def done(self) -> bool:
        return self.phase in ("completed", "failed", "cancelled")

    def move(self, phase: str) -> None:
        self.phase, self.updated = phase, time.time()

    def word(self, vocabulary: str) -> str:
        return VOCABULARIES[vocabulary][PHASES.index(self.phase)]

    def error(self) -> dict[str, Any] | None:
        """execution_error of a failed job."""
        if self.phase != "failed" or self.entry is None:
            return None
        messages = self.entry["status"]["messages"]
        data: dict[str, Any] = next((m[1] for m in reversed(messages) if m[0] == "execution_error"), {})
        return {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
                "exception_message": data.get("exception_message", ""),
                "exception_type": data.get("exception_type", ""), "traceback": data.get("traceback", []),
                "current_inputs": data.get("current_inputs", {}),
                "current_outputs": data.get("current_outputs", [])}

    def status(self, vocabulary: str) -> dict[str, Any]:
        """GET /api/job/{id}/status."""
        error = self.error()
        return {"id": self.id, "status": self.word(vocabulary), "created_at": iso(self.created),
                "updated_at": iso(self.updated), "last_state_update": iso(self.updated),
                "assigned_inference": self.worker.name if self.worker else None,
                "error_message": error["exception_message"] if error else None}

    def body(self, full: bool = True) -> dict[str, Any]:
        """GET /api/jobs/{id} (`full`), or an entry of GET /api/jobs."""
        outputs = self.entry["outputs"] if self.entry else {}
        files = [item for node in outputs.values() for items in node.values() if isinstance(items, list)
                 for item in items if isinstance(item, dict) and "filename" in item]
        body: dict[str, Any] = {
            "id": self.id, "status": self.word("guide"), "create_time": int(self.created),
            "update_time": int(self.updated), "outputs": outputs, "outputs_count": len(files),
            "preview_output": files[0] if files else None,
            "execution_status": self.entry["status"] if self.entry else None,
            "execution_start_time": ms(self.started), "execution_end_time": ms(self.ended)}
        if not full:
            del body["outputs"], body["execution_status"]
        if (error := self.error()) is not None:
            body["execution_error"] = error
        return body

    def queue_item(self) -> list[Any]:
        return [self.item.number, self.id, self.item.prompt, self.item.outputs,
                {"create_time": ms(self.created)}]


class Account:
    """A Comfy Cloud user: its key, plan, files, queue, inference workers and sockets."""

    def __init__(self, cloud: Cloud, key: str, user_id: str) -> None:
        self.cloud, self.key, self.user_id = cloud, key, user_id
        self.tier: str = ACCOUNT_DEFAULTS["tier"]
        self.active: bool = ACCOUNT_DEFAULTS["active"]
        self.credits: float = ACCOUNT_DEFAULTS["credits"]
        self.files: dict[tuple[str, str], bytes] = {}
        self.queue: list[Job] = []  # waiting for a worker, oldest first
        self.workers: list[Worker] = []
        self.sockets: list[Socket] = []
        self.number = 0

    def __repr__(self) -> str:
        return f"<cloud Account {self.user_id} {self.tier}>"

    def settings(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "tier": self.tier, "active": self.active, "credits": self.credits}

    def jobs(self) -> list[Job]:
        return [job for job in self.cloud.jobs.values() if job.account is self]

    def find(self, filename: str) -> bytes | None:
        """A file by its name alone: the store is flat (`subfolder` and `type` do not matter)."""
        name = posixpath.basename(filename)
        found = (data for (_, path), data in self.files.items() if posixpath.basename(path) == name)
        return next(found, None)

    def validator(self) -> Worker:
        return self.workers[0] if self.workers else self._new_worker()

    def _new_worker(self) -> Worker:
        worker = Worker(self, self.cloud.worker_name())
        worker.start()
        self.workers.append(worker)
        return worker

    # --- jobs ------------------------------------------------------------------------------
    async def submit(self, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str],
                     sensitive: dict[str, Any]) -> Job:
        item = Item(self.number, str(uuid.uuid4()), prompt, extra_data, outputs, sensitive)
        self.number += 1
        job = Job(item, self)
        self.cloud.jobs[job.id] = job
        self.queue.append(job)
        await self.dispatch()
        if job.phase == "waiting":  # a worker that takes it says so itself
            await self.send_status()
        return job

    async def dispatch(self) -> None:
        """Hand waiting jobs to idle workers while fewer than the tier's limit run."""
        while self.queue:
            idle = [w for w in self.workers if w.running is None and not w.pending]
            if len(self.workers) - len(idle) >= TIERS[self.tier]:
                return
            worker = idle[0] if idle else self._new_worker()
            job = self.queue.pop(0)
            job.worker = worker
            job.move("pending")
            await worker.put(job.item)

    async def started(self, item: Item) -> None:
        job = self.cloud.jobs[item.prompt_id]
        job.move("in_progress")
        job.started = job.updated
        await self.send("notification", {"value": NOTIFICATION})

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        job = self.cloud.jobs[item.prompt_id]
        job.entry = entry
        if entry["status"]["status_str"] == "success":
            job.move("completed")
        elif any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]):
            job.move("cancelled")
        else:
            job.move("failed")
        job.ended = job.updated
        await self.dispatch()

    async def delete(self, prompt_ids: list[str]) -> list[str]:
        """Cancel the named jobs that have not started; the ids of those cancelled."""
        deleted = []
        for job in self.jobs():
            if job.id not in prompt_ids:
                continue
            if job in self.queue:
                self.queue.remove(job)
            elif job.worker is not None and any(i is job.item for i in job.worker.pending):
                await job.worker.delete_pending(job.id)
            else:  # running (a worker that took it will start it), or over
                continue
            job.move("cancelled")
            deleted.append(job.id)
        await self.send_status()
        await self.dispatch()
        return deleted

    def interrupt(self) -> None:
        """Interrupt every running job of the account."""
        for worker in self.workers:
            if worker.running is not None:
                worker.interrupt(None)

    # --- WebSocket -------------------------------------------------------------------------
    def status_data(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": sum(not j.done for j in self.jobs())}}}

    async def send_status(self) -> None:
        await self.send("status", self.status_data())

    async def send(self, event: str, data: Any) -> None:
        text = json.dumps({"type": event, "data": data})
        for socket in list(self.sockets):
            await send_to(socket, text)


class Cloud:
    """The accounts, their jobs, and the settings every account shares."""

    def __init__(self, state: Any, config: dict[str, Any]) -> None:
        self.state = state
        self.settings: dict[str, Any] = copy_settings(DEFAULTS)
        self.accounts: dict[str, Account] = {}  # by key
        self.jobs: dict[str, Job] = {}
        self._secret = secrets.token_bytes(32)  # signs storage URLs
        self._workers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.configure(**{k: v for k, v in config.items() if k not in ACCOUNT_DEFAULTS})
        self.account(state.comfy_api_key, **{k: v for k, v in config.items() if k in ACCOUNT_DEFAULTS})

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change cloud settings (module docstring); ValueError for an unknown name or value."""
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown cloud settings {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
        if changes.get("status_vocabulary", "guide") not in VOCABULARIES:
            raise ValueError(f"status_vocabulary must be one of {', '.join(VOCABULARIES)}")
        self.settings.update(changes)
        for account in self.accounts.values():
            for worker in account.workers:
                worker.configure(self.settings)
        return copy_settings(self.settings)

    def account(self, key: str, **changes: Any) -> Account:
        """The account of `key` (created if new) with `tier`, `active`, `credits` changed."""
        unknown = set(changes) - set(ACCOUNT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown account settings {sorted(unknown)}; known: "
                             f"{', '.join(ACCOUNT_DEFAULTS)}")
        if changes.get("tier", "creator") not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}")
        if not key:
            raise ValueError("an account needs a key")
        account = self.accounts.get(key)
        if account is None:
            account = self.accounts[key] = Account(self, key, f"cloud-user-{len(self.accounts) + 1:04d}")
        for name, value in changes.items():
            setattr(account, name, float(value) if name == "credits" else value)
        if "tier" in changes and account.queue:  # a higher tier starts waiting jobs at once
            task = asyncio.get_running_loop().create_task(account.dispatch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return account

    def by_key(self, key: str | None) -> Account | None:
        return self.accounts.get(key) if key else None

    def by_user(self, user_id: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.user_id == user_id), None)

    def worker_name(self) -> str:
        self._workers += 1
        return f"inf-{self._workers}"

    # --- signed storage URLs ---------------------------------------------------------------
    def _signature(self, user_id: str, filename: str, expires: str) -> str:
        message = f"{user_id}/{filename}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, host: str, account: Account, filename: str) -> str:
        expires = str(int(time.time() + float(self.settings["url_seconds"])))
        signature = self._signature(account.user_id, filename, expires)
        return (f"{host}{STORAGE}/{account.user_id}/{quote(filename)}"
                f"?Expires={expires}&Signature={signature}")

    def signature_valid(self, request: web.Request) -> bool:
        expires, signature = request.query.get("Expires", ""), request.query.get("Signature", "")
        expected = self._signature(request.match_info["user_id"], request.match_info["filename"], expires)
        return expires.isdigit() and int(expires) > time.time() and hmac.compare_digest(signature, expected)
