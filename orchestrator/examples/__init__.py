"""Runnable example plans, each with its tools and bundled data (see ``README.md`` here).

* ``trip``: a planner delegating to flights, hotels and activities workers (TOML).
* ``bugfix``: workers that read, test and patch a small bundled package (YAML).
* ``longrun``: a stock audit of 24 warehouses as a DAG of 125 steps (JSON).

Tools are referenced from the plan files as ``orchestrator.examples.<name>.tools:<function>``.
"""
