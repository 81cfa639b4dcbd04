"""A tool module whose import fails: validation must report it, not crash."""

raise RuntimeError("database unreachable")
