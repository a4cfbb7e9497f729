"""The executor of a ComfyUI: prompts run node by node in virtual time, with ComfyUI's messages,
caching, previews, outputs and the run faults."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import posixpath
import time
from typing import Any

from .. import synth
from ..faults import ODD_NAMES
from ..synth import workflow_params as _read_workflow
from .nodes import MAX_HISTORY, SAMPLER_CLASSES
from .server import Interrupted, Item, NodeFailure, Run, Server, annotated
from .validate import full_type_name


class ComfyUI(Server):
    """A machine's ComfyUI: its state (server.py) and the executor that runs its queue."""

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    # --- execution -------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            item = self.sorted_pending()[0]
            self.pending.remove(item)
            self._interrupt = False  # from here on an interrupt is this prompt's
            self.running = item
            await self.queue_updated()
            run = Run(item, self.client_of(item), _workflow_params(item.prompt))
            self.client_id = run.client
            try:
                success = await self._execute(run)
            except Exception as exc:  # an emulator bug must not stall the queue
                run.messages.append(["execution_error", {"prompt_id": item.prompt_id,
                                                         "exception_message": str(exc),
                                                         "exception_type": full_type_name(exc)}])
                success = False
            self.running = None
            entry = {"prompt": item.public(), "outputs": run.ui,
                     "status": {"status_str": "success" if success else "error", "completed": success,
                                "messages": run.messages},
                     "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                              for n in run.ui}}
            await self.finished(item, entry)
            await self.queue_updated()
            if run.client is not None:
                await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, run.client)
            self.client_id = None
            self.last_node_id = None

    def client_of(self, item: Item) -> str | None:
        """The client a prompt's messages go to (None: only the broadcast ones are sent)."""
        return item.extra_data.get("client_id")

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        """A prompt ran (or failed, or was interrupted): keep its history entry."""
        self.history[item.prompt_id] = entry
        while len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))

    async def _message(self, run: Run, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        if run.client is not None or broadcast:
            await self.send(event, data, run.client)

    async def _progress_state(self, run: Run, node_id: str, value: int, maximum: int, state: str) -> None:
        run.progress[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                                 "prompt_id": run.item.prompt_id, "display_node_id": node_id,
                                 "parent_node_id": None, "real_node_id": node_id}
        await self.send("progress_state",
                        {"prompt_id": run.item.prompt_id, "nodes": copy.deepcopy(run.progress)}, run.client)

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        sigs: dict[str, str] = {}

        def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
            if node_id in sigs:
                return sigs[node_id]
            node = prompt[node_id]
            parts: list[Any] = [node["class_type"]]
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            for name, value in sorted(inputs.items()):
                if _is_link(value, prompt) and value[0] not in trail:
                    parts.append([name, sig(value[0], (*trail, node_id)), value[1]])
                else:
                    parts.append([name, value])
            if node["class_type"] == "LoadImage":  # IS_CHANGED: the file's hash
                name, kind = annotated(str(inputs.get("image", "")))
                data = self.files.get((kind or "input", posixpath.normpath(name)), b"")
                parts.append(hashlib.sha256(data).hexdigest())
            sigs[node_id] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
            return sigs[node_id]

        for node_id in prompt:
            sig(node_id)
        return sigs

    def _order(self, prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            for value in prompt[node_id].get("inputs", {}).values():
                if _is_link(value, prompt) and value[0] not in cached:
                    visit(value[0])
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    def _arm_faults(self, run: Run, order: list[str]) -> None:
        prompt = run.item.prompt
        run.drop = self.state.faults.take(self.server_id, "ws", {"ws_drop"})
        run.raises = self.state.faults.take(self.server_id, "run", {"node_raises"})
        run.odd = self.state.faults.take(self.server_id, "run", {"odd_names"})
        if run.raises is None:
            return
        wanted = run.raises.params.get("node")
        samplers = [n for n in order if prompt[n]["class_type"] in SAMPLER_CLASSES]
        if wanted is None:
            run.raise_node = samplers[0] if samplers else (order[-1] if order else None)
        else:
            run.raise_node = next((n for n in order if n == str(wanted) or prompt[n]["class_type"] == wanted),
                                  None)

    def _check(self, run: Run, node_id: str, step: int | None = None) -> None:
        """Raise the interrupt, or the armed `node_raises` fault when this node (and step) is its."""
        if self._interrupt:
            raise Interrupted
        if run.raises is None or node_id != run.raise_node:
            return
        params = run.raises.params
        at_step = params.get("at_step")
        sampler = run.item.prompt[node_id]["class_type"] in SAMPLER_CLASSES
        if at_step is not None and sampler and (step is None or step < int(at_step)):
            return
        raise NodeFailure(params.get("exception_type", "RuntimeError"),
                          params.get("message", "mat1 and mat2 shapes cannot be multiplied "
                                                "(154x2048 and 768x320)"))

    async def _execute(self, run: Run) -> bool:
        item, prompt = run.item, run.item.prompt
        await self._message(run, "execution_start", {"prompt_id": item.prompt_id})
        sigs = self._signatures(prompt)
        cached = [n for n in prompt if sigs[n] in self.cache]
        await self._message(run, "execution_cached", {"nodes": cached, "prompt_id": item.prompt_id})
        current_outputs = list(cached)
        order = self._order(prompt, item.outputs, set(cached))
        self._arm_faults(run, order)
        keep = {sigs[n]: self.cache[sigs[n]] for n in cached}
        try:
            for node_id in order:
                class_type = prompt[node_id]["class_type"]
                if sigs[node_id] in keep:  # a cached output node: its UI output is sent again
                    ui = keep[sigs[node_id]]
                    if run.client is not None:
                        await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                     "prompt_id": item.prompt_id}, run.client)
                    if ui is not None:
                        run.ui[node_id] = ui
                    await self._progress_state(run, node_id, 1, 1, "finished")
                    continue
                await self._progress_state(run, node_id, 0, 1, "running")
                self.last_node_id = node_id
                if run.client is not None:
                    await self.send("executing", {"node": node_id, "display_node": node_id,
                                                  "prompt_id": item.prompt_id}, run.client)
                try:
                    ui = await self._run_node(run, node_id, class_type, prompt[node_id].get("inputs", {}))
                except NodeFailure as failure:
                    await self._progress_state(run, node_id, run.progress[node_id]["value"],
                                               run.progress[node_id]["max"], "error")
                    inputs = prompt[node_id].get("inputs", {})
                    await self._message(run, "execution_error", {
                        "prompt_id": item.prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run.executed), "exception_message": str(failure),
                        "exception_type": failure.exception_type,
                        "traceback": _fake_traceback(failure, class_type),
                        "current_inputs": {k: [v if isinstance(v, (int, float, str, bool)) or v is None
                                               else f"<{k} object>"] for k, v in inputs.items()},
                        "current_outputs": current_outputs})
                    return False
                except Interrupted:
                    await self._message(run, "execution_interrupted", {
                        "prompt_id": item.prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run.executed)}, broadcast=True)
                    return False
                keep[sigs[node_id]] = ui
                run.executed.append(node_id)
                maximum = run.progress[node_id]["max"]
                await self._progress_state(run, node_id, maximum, maximum, "finished")
                if ui is not None:
                    run.ui[node_id] = ui
                    if run.client is not None:
                        await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                     "prompt_id": item.prompt_id}, run.client)
        finally:
            # only this prompt's nodes stay cached; those that completed stay even when it fails
            self.cache = keep
        await self._message(run, "execution_success", {"prompt_id": item.prompt_id})
        return True

    async def _run_node(self, run: Run, node_id: str, class_type: str,
                        inputs: dict[str, Any]) -> dict[str, Any] | None:
        clock = self.state.clock
        self._check(run, node_id)
        params = run.params
        if class_type in SAMPLER_CLASSES:
            steps = int(inputs.get("steps", 20))
            drop_at = int(run.drop.params.get("at_step", max(1, steps // 2))) if run.drop else None
            for step in range(1, steps + 1):
                await clock.sleep(self.step_seconds)
                self._check(run, node_id, step)
                if drop_at is not None and step >= drop_at:
                    self._drop_sockets(run)
                    drop_at = None
                await self.send("progress", {"value": step, "max": steps, "prompt_id": run.item.prompt_id,
                                             "node": node_id}, run.client)
                await self._progress_state(run, node_id, step, steps, "running")
                if self.previews:
                    image = synth.preview(params["seed"], params["prompt"], params["width"], params["height"],
                                          step, steps)
                    await self.send_preview(run, node_id, image)
            return None
        if class_type == "CheckpointLoaderSimple":
            await clock.sleep(self.load_seconds)
        else:
            await clock.sleep(self.node_seconds)
        self._check(run, node_id)
        if class_type == "SaveImage":
            prefix = str(inputs.get("filename_prefix", "ComfyUI"))
            if run.odd is not None:
                return {"images": self._save_odd(params)}
            return {"images": self._save_images(params, prefix, "output")}
        if class_type == "PreviewImage":
            return {"images": self._save_images(params, "ComfyUI" + self._temp_prefix, "temp")}
        if class_type == "VHS_VideoCombine":
            return {"gifs": [self._save_video(params, inputs)]}
        return None

    def _drop_sockets(self, run: Run) -> None:
        for socket in self.targets(run.client) or self.targets(None):
            socket.abort()

    def _save_images(self, params: dict[str, Any], prefix: str, kind: str) -> list[dict[str, Any]]:
        subfolder, filename, counter = self._save_path(prefix, kind)
        results = []
        for index in range(params["batch"]):
            name = f"{filename}_{counter:05}_.png"
            data = synth.image(params["seed"], params["prompt"], params["width"], params["height"], index)
            self.files[(kind, posixpath.join(subfolder, name))] = data
            results.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return results

    def _save_odd(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The `odd_names` fault: one image per hostile name /view can serve (it refuses `..` names,
        and aiohttp a NUL byte in the Content-Disposition header, in ComfyUI as here)."""
        names = [name for name in ODD_NAMES if ".." not in name and "\x00" not in name]
        results = []
        for index, name in enumerate(names):
            self.files[("output", name)] = synth.image(params["seed"], params["prompt"], 64, 64, index)
            results.append({"filename": name, "subfolder": "", "type": "output"})
        return results

    def _save_video(self, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        kind = "output" if inputs.get("save_output", True) else "temp"
        fmt = str(inputs.get("format", "image/webp"))
        ext, data = synth.video_file(params["seed"], params["prompt"], fmt)
        prefix = str(inputs.get("filename_prefix", "AnimateDiff"))
        subfolder, filename, counter = self._save_path(prefix, kind)
        name = f"{filename}_{counter:05}.{ext}"
        path = posixpath.join(subfolder, name)
        self.files[(kind, path)] = data
        self.files[(kind, posixpath.join(subfolder, f"{filename}_{counter:05}.png"))] = synth.image(
            params["seed"], params["prompt"], 256, 256)
        return {"filename": name, "subfolder": subfolder, "type": kind, "format": fmt,
                "frame_rate": float(inputs.get("frame_rate", 8)), "workflow": f"{filename}_{counter:05}.png",
                "fullpath": f"/app/ComfyUI/{kind}/{path}"}



def _fake_traceback(failure: NodeFailure, class_type: str) -> list[str]:
    return [
        '  File "/app/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, '
        "has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, "
        "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "hidden_inputs=hidden_inputs)\n",
        '  File "/app/ComfyUI/execution.py", line 315, in get_output_data\n    return_values = await '
        "_async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, "
        "allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "hidden_inputs=hidden_inputs)\n",
        f'  File "/app/ComfyUI/nodes.py", line 1525, in {class_type.lower()}\n    raise '
        f"{failure.exception_type.rsplit('.', 1)[-1]}({str(failure)!r})\n",
    ]


def _is_link(value: Any, prompt: dict[str, Any]) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt


def _workflow_params(prompt: dict[str, Any]) -> dict[str, Any]:
    """Seed, prompt text, size and batch the synthetic outputs are made from."""
    try:
        params = _read_workflow(prompt)
        params["width"], params["height"] = int(params["width"]), int(params["height"])
        return params
    except (TypeError, ValueError, AttributeError):
        return {"seed": 0, "prompt": "", "width": 512, "height": 512, "batch": 1}

