"""Tests of calc; run them with ``python -m unittest discover -s calc -t .``."""
