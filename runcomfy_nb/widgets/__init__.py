"""Notebook widgets (anywidget): `JobProgress` follows a job live, `Gallery` shows its outputs,
`SweepView` follows a sweep and fills its grid, `MachinePanel` watches (and stops or extends) the
machines launched from this kernel.

Each pairs with an ES module and a stylesheet in `js/` (with `js/shared.js` and `js/shared.css`
written in by `assets`) and falls back to plain text and static
HTML where widgets cannot render (nbconvert, GitHub). Loading them has the running IPython show
each `JobResult` as a `Gallery` (the core itself imports no display code).
"""

from .. import register_display
from .gallery import Gallery
from .machines import MachinePanel
from .progress import JobProgress
from .sweep import SweepView

register_display()

__all__ = ["Gallery", "JobProgress", "MachinePanel", "SweepView"]
