"""Engines own the round loop: `local` (in-process, the default) and, later, `flower`."""
