"""Notebook widgets (anywidget): `JobProgress` follows a job live, `Gallery` shows its outputs.

Each pairs with an ES module and a stylesheet in `js/` and falls back to plain text and static
HTML where widgets cannot render (nbconvert, GitHub).
"""

from .gallery import Gallery
from .progress import JobProgress

__all__ = ["Gallery", "JobProgress"]
