"""Plans: the plan model, loaders for TOML/YAML/JSON, validation and the Python builder."""

from loguru import logger

logger.disable(__name__)
