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
that speaks MLflow's scoring protocol. On a Ray cluster (GATEWAY_PLACEMENT=ray),
`NodeCommand` builds the same commands on the node that runs the backend.

A launcher also says whether its backends' `/invocations` is free of side
effects, which decides whether the upstream pool may re-send a call whose
reused connection the backend closed (see `UpstreamPool.resend_dropped`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gateway.settings import Settings
from supervisor.placement.local import CommandFactory
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Launcher:
    """How backends start, and whether a dropped call to them may be sent again."""

    build: CommandFactory
    resend_safe: bool


def mlflow_serve_factory(settings: Settings) -> CommandFactory:
    """`mlflow models serve` of the registry URI, run by this interpreter's MLflow."""
    env = settings.child_environment()

    async def build(record: DeploymentRecord, port: int, host: str) -> Command:
        return Command(mlflow_serve_argv(record, port, host, settings.backend_workers), env)

    return build


def mlflow_serve_argv(record: DeploymentRecord, port: int, host: str, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", f"models:/{record.model_name}/{record.version}",
        "-h", host,
        "-p", str(port),
        "-w", str(workers),
        "--env-manager", record.env_manager,
    ]  # fmt: skip


def _download(model_uri: str, destination: Path) -> bool:
    """Fetch the model's artifacts to `destination` unless they are there (blocking).

    Returns whether it downloaded.

    Each call stages into a folder of its own and renames it into place, so two
    gateways sharing the data dir never remove each other's files; if another
    one finished first, its copy is kept and ours is dropped.
    """
    import mlflow.artifacts

    if (destination / "MLmodel").is_file():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(staging))
        )
        if not (local / "MLmodel").is_file():
            raise FileNotFoundError(f"{model_uri} has no MLmodel file")
        try:
            local.rename(destination)
        except OSError:
            if not (destination / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


class ArtifactCache:
    """Model artifacts on local disk, fetched once per version.

    Replicas of one version that start together share one download: the first
    starts it, the others await the same future (shielded, so a starter that is
    cancelled does not cancel the download the others wait for).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pending: dict[Path, asyncio.Future[Path]] = {}
        self.downloads = 0  # downloads done (tests check "once per version")

    async def fetch(self, model_name: str, version: str) -> Path:
        destination = self.root / model_name / version
        pending = self._pending.get(destination)
        if pending is None:
            pending = asyncio.ensure_future(
                self._download(f"models:/{model_name}/{version}", destination)
            )
            self._pending[destination] = pending
            pending.add_done_callback(lambda _: self._pending.pop(destination, None))
        return await asyncio.shield(pending)

    async def _download(self, model_uri: str, destination: Path) -> Path:
        if await asyncio.to_thread(_download, model_uri, destination):
            self.downloads += 1
        return destination


def lean_factory(settings: Settings) -> CommandFactory:
    """MLflow's scoring server started directly, for env_manager=local."""
    base_env = settings.child_environment()
    fallback = mlflow_serve_factory(settings)
    cache = ArtifactCache(settings.data_dir / "models")

    async def build(record: DeploymentRecord, port: int, host: str) -> Command:
        if record.env_manager != "local":
            return await fallback(record, port, host)
        path = await cache.fetch(record.model_name, record.version)
        return lean_command(path, port, host, settings.backend_workers, base_env)

    return build


def lean_command(
    path: Path, port: int, host: str, workers: int, base_env: dict[str, str]
) -> Command:
    """MLflow's scoring server for the model files at `path`, as this interpreter's child."""
    from mlflow.pyfunc.scoring_server import get_cmd

    command, server_env = get_cmd(
        str(path),
        port=port,
        host=host,  # type: ignore[arg-type]  # MLflow annotates it as int
        nworkers=workers,
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


def custom_factory(settings: Settings, template: list[str]) -> CommandFactory:
    """Any server that speaks MLflow's scoring protocol, from an argv template."""
    env = settings.child_environment()

    async def build(record: DeploymentRecord, port: int, host: str) -> Command:
        return Command(custom_argv(template, record, port, host), env)

    return build


def custom_argv(
    template: Sequence[str], record: DeploymentRecord, port: int, host: str
) -> list[str]:
    """The template's words with {port}, {host}, {model}, {version}, {model_uri} filled in."""
    fields = {
        "port": str(port), "host": host, "model": record.model_name, "version": record.version,
        "model_uri": f"models:/{record.model_name}/{record.version}",
    }  # fmt: skip
    # str.replace, not str.format: a brace elsewhere in an argument stays as it is.
    argv = []
    for word in template:
        for name, value in fields.items():
            word = word.replace("{" + name + "}", value)
        argv.append(word)
    return argv


def make_launcher(settings: Settings) -> Launcher:
    """The launcher the settings choose: a custom command, lean, or `mlflow models serve`."""
    if settings.backend_command:
        # An arbitrary server: re-sending a call is safe only if the operator says so.
        return Launcher(
            custom_factory(settings, json.loads(settings.backend_command)),
            resend_safe=settings.backend_idempotent,
        )
    if settings.launcher == "lean":
        return Launcher(lean_factory(settings), resend_safe=True)
    return Launcher(mlflow_serve_factory(settings), resend_safe=True)


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """The backend command, built on the Ray node that will run it.

    The Ray placement pickles it to the node and calls it inside the backend's
    actor, so it carries only what the node cannot know (the registry, the
    launcher's choice) and no secret, path or environment of the gateway's host:
    the node's own Python, PATH and temp dir are used. The lean launcher's
    backend process first downloads the model's artifacts on the node, from the
    tracking server, then becomes MLflow's scoring server (`serve_on_node`): the
    actor, resident for the backend's whole life, never loads MLflow.
    """

    tracking_uri: str
    workers: int
    launcher: str = "lean"
    template: tuple[str, ...] | None = None

    async def __call__(self, record: DeploymentRecord, port: int, host: str) -> Command:
        env = backend_environment(os.environ, self.tracking_uri, self.workers)
        if self.template is not None:
            return Command(custom_argv(self.template, record, port, host), env)
        if self.launcher != "lean" or record.env_manager != "local":
            return Command(mlflow_serve_argv(record, port, host, self.workers), env)
        digest = hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:12]
        spec = {
            "model": record.model_name, "version": record.version, "port": port, "host": host,
            "workers": self.workers,
            "path": str(Path(tempfile.gettempdir()) / "modelgw-ray" / "models" / digest
                        / record.model_name / record.version),
        }  # fmt: skip
        return Command([sys.executable, "-m", __name__, json.dumps(spec)], env)


def serve_on_node(spec: dict[str, Any]) -> NoReturn:
    """The lean backend's process on a Ray node: fetch the model, then exec its server.

    Same pid after the exec, so the parent-death signal and process group the
    actor gave it still hold. Two replicas fetching at once are fine (see _download).
    """
    path = Path(spec["path"])
    model_uri = f"models:/{spec['model']}/{spec['version']}"
    print(f"fetching {model_uri} into {path}", flush=True)
    _download(model_uri, path)  # the registry comes from MLFLOW_TRACKING_URI
    command = lean_command(path, spec["port"], spec["host"], spec["workers"], dict(os.environ))
    print(f"starting MLflow's scoring server on {spec['host']}:{spec['port']}", flush=True)
    os.execve(command.argv[0], command.argv, command.env)


def node_command(settings: Settings) -> NodeCommand:
    """What the settings' launcher runs, in the form a Ray node can build."""
    template = json.loads(settings.backend_command) if settings.backend_command else None
    return NodeCommand(
        tracking_uri=settings.tracking_uri,
        workers=settings.backend_workers,
        launcher=settings.launcher,
        template=tuple(template) if template is not None else None,
    )


def backend_environment(base: Mapping[str, str], tracking_uri: str, workers: int) -> dict[str, str]:
    """`base` plus the registry a backend reads; this interpreter's bin first on PATH."""
    env = dict(base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["MLFLOW_REGISTRY_URI"] = tracking_uri
    env["MLFLOW_MODELS_WORKERS"] = str(workers)
    return env


if __name__ == "__main__":
    serve_on_node(json.loads(sys.argv[1]))
