"""The bug fixer example: ``plan.yaml``, its tools and the bundled package in ``sample/``."""
