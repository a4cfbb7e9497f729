"""UI-format exports converted to the API format, compared with the API export of the same graph:
reroutes (frontend and native), muted nodes and notes, primitive nodes and converted widget inputs,
bypassed nodes, the seed's control widget and the image loader's upload widget; refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from runcomfy_nb.emulator.comfyui.nodes import node_schemas
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.ui_format import is_ui_format, to_api

DATA = Path(__file__).parent / "data" / "ui"


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


OBJECT_INFO = {**node_schemas(["v1-5-pruned-emaonly.safetensors"], ["example.png"]),
               **_load("object_info_extra.json")}


@pytest.mark.parametrize("name", ["reroute", "muted", "primitive", "bypass"])
def test_converted_as_export_api(name: str) -> None:
    ui = _load(f"{name}.json")
    assert is_ui_format(ui)
    api = to_api(ui, OBJECT_INFO)
    assert api == _load(f"{name}_api.json")
    assert not is_ui_format(api)


def test_widget_values_as_an_object_and_missing_ones_defaulted() -> None:
    ui = _load("reroute.json")
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    sampler["widgets_values"] = {"seed": 5, "steps": 9, "cfg": 2.5, "sampler_name": "lcm",
                                 "scheduler": "simple", "denoise": 0.5, "unknown": 1}
    latent = next(n for n in ui["nodes"] if n["id"] == 5)
    latent["widgets_values"] = [768]
    api = to_api(ui, OBJECT_INFO)
    assert api["3"]["inputs"] == {
        "seed": 5, "steps": 9, "cfg": 2.5, "sampler_name": "lcm", "scheduler": "simple", "denoise": 0.5,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}
    assert api["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}


def test_bypassed_node_without_an_input_of_the_type_drops_the_link() -> None:
    ui = _load("bypass.json")
    refine = next(n for n in ui["nodes"] if n["id"] == 13)
    refine["inputs"] = refine["inputs"][:3]  # no LATENT input left to pass through
    assert "samples" not in to_api(ui, OBJECT_INFO)["8"]["inputs"]


def test_unlinked_reroute_keeps_the_widget_value() -> None:
    ui = _load("primitive.json")
    encode = next(n for n in ui["nodes"] if n["id"] == 6)
    encode["widgets_values"] = ["kept"]
    ui["nodes"].append({"id": 30, "type": "Reroute", "mode": 0,
                        "inputs": [{"name": "", "type": "*", "link": None}],
                        "outputs": [{"name": "", "type": "STRING", "links": [21]}]})
    ui["links"][-3] = [21, 30, 0, 6, 1, "STRING"]
    assert to_api(ui, OBJECT_INFO)["6"]["inputs"]["text"] == "kept"


def test_combo_with_control_widget_skips_its_filter_list() -> None:
    info = copy.deepcopy(OBJECT_INFO)
    info["KSampler"]["input"]["required"]["sampler_name"][1]["control_after_generate"] = True
    ui = _load("reroute.json")
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    sampler["widgets_values"] = [1, "fixed", 20, 8, "euler", "fixed", "", "karras", 1]
    inputs = to_api(ui, info)["3"]["inputs"]
    assert (inputs["sampler_name"], inputs["scheduler"], inputs["denoise"]) == ("euler", "karras", 1)


def test_subgraph_and_group_node_refused() -> None:
    with pytest.raises(ValidationError, match=r"Node 10 \(a4f5c6d7-.*\) is a subgraph.*Export \(API\)"):
        to_api(_load("subgraph.json"), OBJECT_INFO)
    ui = _load("reroute.json")
    ui["nodes"][0]["type"] = "workflow>Loaders"
    ui["extra"]["groupNodes"] = {"Loaders": {"nodes": [], "links": []}}
    with pytest.raises(ValidationError, match=r"Node 4 \(workflow>Loaders\) is a group node.*Export \(API\)"):
        to_api(ui, OBJECT_INFO)


def test_class_missing_from_object_info_named() -> None:
    info = {k: v for k, v in OBJECT_INFO.items() if k not in ("KSampler", "SaveImage")}
    with pytest.raises(ValidationError) as caught:
        to_api(_load("muted.json"), info)
    lines = str(caught.value).splitlines()
    assert lines[0] == ("Node 3 (KSampler): its class is not on the server, so its widget values "
                        "cannot be named.")
    assert lines[1].startswith("Node 9 (SaveImage)")
    assert "Export (API)" in lines[-1]
    # a muted or bypassed node needs no schema
    info = {k: v for k, v in OBJECT_INFO.items() if k != "ImageScale"}
    assert to_api(_load("bypass.json"), info) == _load("bypass_api.json")


@pytest.mark.parametrize("data", [[], "nodes", {"nodes": "x"}, {"3": {"class_type": "KSampler"}}])
def test_not_ui_format(data: Any) -> None:
    assert not is_ui_format(data)
    with pytest.raises(ValidationError, match="not a UI-format"):
        to_api(data, OBJECT_INFO)


@pytest.mark.parametrize("data", [{"nodes": [{"type": "KSampler"}], "links": []},
                                  {"nodes": [], "links": [[1, 2]]},
                                  {"nodes": [], "links": [{"id": 1, "origin_id": 2}]}])
def test_garbage_refused(data: Any) -> None:
    with pytest.raises(ValidationError):
        to_api(data, OBJECT_INFO)


def test_bypass_picks_by_type_and_keeps_a_widget_value_when_nothing_fits() -> None:
    ui = _load("bypass.json")
    scale = next(n for n in ui["nodes"] if n["id"] == 12)
    scale["inputs"] = [{"name": "mask", "type": "MASK", "link": None},
                       {"name": "image", "type": "IMAGE,MASK", "link": 12}]
    assert to_api(ui, OBJECT_INFO)["11"]["inputs"]["pixels"] == ["10", 0]  # a type list fits
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 30})
    ui["links"].append([30, 12, 0, 3, 4, "INT"])
    assert to_api(ui, OBJECT_INFO)["3"]["inputs"]["seed"] == 1001  # no INT input to pass: the value stays


def test_list_widget_value_wrapped() -> None:
    ui = _load("reroute.json")
    next(n for n in ui["nodes"] if n["id"] == 9)["widgets_values"] = [["a", "b"]]
    assert to_api(ui, OBJECT_INFO)["9"]["inputs"]["filename_prefix"] == {"__value__": ["a", "b"]}


def test_tutorial_ui_twin_converts_to_its_api_file() -> None:
    notebooks = Path(__file__).parents[2] / "notebooks" / "workflows"
    ui = json.loads((notebooks / "txt2img_ui.json").read_text(encoding="utf-8"))
    api = json.loads((notebooks / "txt2img_api.json").read_text(encoding="utf-8"))
    converted = to_api(ui, OBJECT_INFO)
    assert {k: (n["class_type"], n["inputs"]) for k, n in converted.items()} == {
        k: (n["class_type"], n["inputs"]) for k, n in api.items()}
    assert all(converted[k]["_meta"] == n["_meta"] for k, n in api.items() if "_meta" in n)


def test_upload_widget_comes_after_the_last_required_input() -> None:
    info = {**OBJECT_INFO, "LoadImageMask": {  # as ComfyUI's nodes.py declares it
        "input": {"required": {"image": [["example.png"], {"image_upload": True}],
                               "channel": [["alpha", "red", "green", "blue"]]}},
        "input_order": {"required": ["image", "channel"]}, "output": ["MASK"], "name": "LoadImageMask",
        "display_name": "Load Image (as Mask)"}}
    ui = {"nodes": [{"id": 1, "type": "LoadImageMask", "mode": 0, "inputs": [],
                     "outputs": [{"name": "MASK", "type": "MASK", "links": []}],
                     "widgets_values": ["example.png", "red", "image"]}], "links": []}
    assert to_api(ui, info) == {"1": {"inputs": {"image": "example.png", "channel": "red"},
                                      "class_type": "LoadImageMask",
                                      "_meta": {"title": "Load Image (as Mask)"}}}
