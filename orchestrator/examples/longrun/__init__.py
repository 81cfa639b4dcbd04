"""The long-running example: a stock audit of 24 warehouses as a DAG of 125 steps."""
