"""A small plan and its tools for the crash-point and signal tests (tests/jobs/)."""
