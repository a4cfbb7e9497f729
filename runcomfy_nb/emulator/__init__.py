"""A local emulator of the RunComfy APIs: real HTTP on 127.0.0.1, synthetic media, faults."""

from .app import Emulator

__all__ = ["Emulator"]
