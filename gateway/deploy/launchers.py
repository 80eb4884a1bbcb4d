"""Commands that start a backend for a deployment, as argument vectors.

Two launchers:
- `mlflow`: `mlflow models serve`, exactly as a user would run it. It keeps a
  resident `mlflow` CLI parent (~280 MB) next to the server it starts.
- `lean` (the default, for env_manager=local): the gateway downloads the
  model's artifacts itself, in a thread, and starts MLflow's own scoring
  server (`mlflow.pyfunc.scoring_server.get_cmd`) as its direct child, with
  uvloop and httptools and without per-request access logging. Same server
  and model code, one process instead of two, no CLI start-up.
Other env managers always go through `mlflow models serve`, which builds the
model's environment. `GATEWAY_BACKEND_COMMAND` replaces both with any server
that speaks MLflow's scoring protocol.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
from pathlib import Path

from gateway.settings import Settings
from supervisor.manager import CommandFactory
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord

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


def _download(model_uri: str, destination: Path) -> Path:
    """The model's artifacts under `destination`, fetched once per version."""
    import mlflow.artifacts

    if (destination / "MLmodel").is_file():
        return destination
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(staging)))
    if not (local / "MLmodel").is_file():
        raise FileNotFoundError(f"{model_uri} has no MLmodel file")
    if local != staging:
        local.rename(destination)
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(destination)
    return destination


def lean_factory(settings: Settings) -> CommandFactory:
    """MLflow's scoring server started directly, for env_manager=local."""
    base_env = settings.child_environment()
    fallback = mlflow_serve_factory(settings)
    cache = settings.data_dir / "models"

    async def build(record: DeploymentRecord, port: int) -> Command:
        if record.env_manager != "local":
            return await fallback(record, port)
        from mlflow.pyfunc.scoring_server import get_cmd

        uri = f"models:/{record.model_name}/{record.version}"
        path = await asyncio.to_thread(_download, uri, cache / f"{record.key}")
        command, server_env = get_cmd(
            str(path),
            port=port,
            host="127.0.0.1",  # type: ignore[arg-type]  # MLflow annotates it as int
            nworkers=settings.backend_workers,
        )
        words = shlex.split(command)
        if not words or words[0] != "uvicorn":
            raise RuntimeError(f"unexpected scoring server command from MLflow: {command!r}")
        argv = [sys.executable, "-m", "uvicorn", *words[1:],
                "--loop", "uvloop", "--http", "httptools", "--no-access-log"]  # fmt: skip
        env = {**server_env, **base_env}
        # get_cmd's own variables (the model path, the request timeout) win.
        env.update({k: v for k, v in server_env.items() if k.startswith("MLFLOW_")})
        env["MLFLOW_TRACKING_URI"] = base_env["MLFLOW_TRACKING_URI"]
        return Command(argv=argv, env=env)

    return build


def custom_factory(settings: Settings, template: list[str]) -> CommandFactory:
    """Any server that speaks MLflow's scoring protocol, from an argv template."""
    env = settings.child_environment()

    async def build(record: DeploymentRecord, port: int) -> Command:
        fields = {
            "port": str(port), "model": record.model_name, "version": record.version,
            "model_uri": f"models:/{record.model_name}/{record.version}",
        }  # fmt: skip
        # str.replace, not str.format: a brace elsewhere in an argument stays as it is.
        argv = []
        for word in template:
            for name, value in fields.items():
                word = word.replace("{" + name + "}", value)
            argv.append(word)
        return Command(argv=argv, env=env)

    return build


def command_factory(settings: Settings) -> CommandFactory:
    if settings.backend_command:
        return custom_factory(settings, json.loads(settings.backend_command))
    return lean_factory(settings) if settings.launcher == "lean" else mlflow_serve_factory(settings)
