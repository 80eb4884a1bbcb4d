"""modelgw: serve MLflow registry models as supervised, fast HTTP endpoints."""

__version__ = "0.1.0"
