"""The MachinePanel's module, as anywidget gets it, in headless Chromium with a fake anywidget
model (`harness.html?scenario=machines`, `machines_harness.js`); the page writes what it saw as
JSON, read back from `--dump-dom`."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_page

A = "d26d4f31-8696-43ad-ba62-b4f8c268b79a"
B = "761af3a7-1b2c-4d5e-8f90-a1b2c3d4e5f6"


def test_machine_panel_in_a_browser(server: str, tmp_path: Path) -> None:
    r = run_page(server, "harness.html?scenario=machines", tmp_path, budget_ms=30000)
    steps = r["steps"]

    assert r["header"] == ["Machine", "Type", "Status", "Uptime", "Est. cost", "Time left", ""]
    assert "estimate" in r["costTitle"] and "costs are estimates" in r["footer"]
    assert r["footer"].startswith("refreshes every 10 s")
    assert r["order"] == ["d26d", "note", "761a", "note", "0c0f", "note"]

    a, b, c = steps["initial"]["A"], steps["initial"]["B"], steps["initial"]["C"]
    assert (a["short"], a["title"], a["type"], a["status"]) == ("d26d4f31", A, "large", "ready")
    assert a["kept"]
    assert a["badgeClass"] == "rcnb-badge rcnb-ready" and a["badgeColor"] == "rgb(22, 163, 74)"
    assert a["uptime"] == "1 min 05 s" and a["cost"] == "≈$0.03"
    assert a["left"].startswith(("29 min", "30 min"))
    assert a["stop"] == {"shown": True, "disabled": False, "text": "Stop", "confirm": False}
    assert a["extend"] == {"shown": True, "disabled": False, "text": "Extend +30 min"}
    assert not a["noteShown"]
    assert (b["status"], b["uptime"], b["cost"], b["left"]) == (
        "starting", "not ready (not billed)", "$0.00", "1 h 00 min once ready")
    assert b["badgeColor"] == "rgb(217, 119, 6)" and b["stop"]["shown"] and b["extend"]["shown"]
    assert (c["status"], c["uptime"], c["cost"], c["left"]) == ("stopped", "1 h 00 min", "≈$1.75", "—")
    assert not c["stop"]["shown"] and not c["extend"]["shown"] and not c["kept"]
    assert c["warning"] == "could not refresh: TimeoutError" and c["error"] is None and c["noteShown"]

    # uptime ticks in the browser with no message from Python
    assert r["ticked"]["before"] == "1 min 05 s" and r["ticked"]["after"] in ("1 min 07 s", "1 min 08 s")

    clicked = steps["extendClicked"]
    assert clicked["extend"]["disabled"] and clicked["stop"]["disabled"]
    assert clicked["extend"]["text"] == "extending…"
    extended = steps["extended"]
    assert not extended["extend"]["disabled"] and extended["extend"]["text"] == "Extend +30 min"
    assert extended["left"].startswith(("59 min", "1 h 00 min"))

    assert steps["confirming"]["stop"]["text"] == "Confirm stop" and steps["confirming"]["stop"]["confirm"]
    assert r["sentBeforeConfirm"] == 1  # the first Stop click sent nothing
    assert steps["stopClicked"]["stop"] == {"shown": True, "disabled": True, "text": "stopping…",
                                            "confirm": False}
    assert steps["stopStillBusy"]["stop"]["disabled"]
    stopped = steps["stopped"]
    assert stopped["status"] == "stopping" and stopped["badgeClass"] == "rcnb-badge rcnb-stopping"
    assert not stopped["stop"]["shown"] and not stopped["extend"]["shown"] and stopped["left"] == "—"
    assert r["sameElement"]  # rows are updated in place, not rebuilt under the pointer
    assert r["frozen"]["before"] == r["frozen"]["after"]

    assert steps["bConfirming"]["stop"]["text"] == "Confirm stop"
    assert steps["bLapsed"]["stop"]["text"] == "Stop" and not steps["bLapsed"]["stop"]["confirm"]
    assert steps["bBusy"]["extend"]["disabled"]
    refused = steps["bRefused"]
    assert not refused["extend"]["disabled"] and not refused["stop"]["disabled"]
    assert refused["error"] == "extend failed: the machine is not ready yet"
    assert refused["errorColor"] == "rgb(220, 38, 38)" and refused["noteShown"]

    assert r["sent"] == [{"type": "extend", "id": A}, {"type": "stop", "id": A}, {"type": "extend", "id": B}]

    failed = steps["bFailed"]
    assert failed["status"] == "failed" and failed["badgeColor"] == "rgb(220, 38, 38)"
    assert failed["stop"]["shown"] and not failed["extend"]["shown"] and not failed["noteShown"]

    assert r["reordered"] == {"order": ["0c0f", "note", "d26d", "note"], "B": None}
    assert r["empty"] == {"emptyShown": True, "tableShown": False}
    assert r["afterCleanup"] == {"listeners": 0, "children": 0}
    assert r["format"] == ["4 s", "2 min 05 s", "1 h 02 min", "$1,234.50"]
    assert r["figures"] == {"uptime": "30 min 00 s", "cost": "≈$0.88", "left": "30 min 00 s"}
