"""Commands that start a backend for a deployment, as argument vectors."""

from __future__ import annotations

import sys

from supervisor.manager import CommandFactory
from supervisor.ports import DeploymentRecord
from supervisor.process import Command

from .settings import Settings

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


def mlflow_serve_factory(settings: Settings) -> CommandFactory:
    """`mlflow models serve` of the registry URI, run by this interpreter's MLflow."""
    env = settings.child_environment()

    async def build(record: DeploymentRecord, port: int) -> Command:
        argv = [
            sys.executable, "-m", "mlflow", "models", "serve",
            "-m", f"models:/{record.model_name}/{record.version}",
            "-h", "127.0.0.1",
            "-p", str(port),
            "-w", str(settings.backend_workers),
            "--env-manager", record.env_manager,
        ]  # fmt: skip
        return Command(argv=argv, env=env)

    return build
