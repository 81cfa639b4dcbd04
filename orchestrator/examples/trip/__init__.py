"""The trip planner example: ``plan.toml``, its tools and their bundled data sets."""
