"""Kernel microbenchmarks: `python -m bench [op ...] [--quick] [--cpu]` (see harness.py and NOTES.md)."""
