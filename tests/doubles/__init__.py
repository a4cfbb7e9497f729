"""Independent test doubles of remote servers, written from shared/api only (not from the emulator)."""
