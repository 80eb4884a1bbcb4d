"""The `modelgw` command: `serve` runs the gateway, `demo` runs it with a demo model;
`ls`, `deploy`, `scale`, `undeploy`, `predict`, `logs` and `report` are the client of
a running gateway (gateway/client/).

Every setting is an environment variable (see settings.py); a flag given here
overrides it. Settings are built once and passed down. Client commands build no
Settings and touch no data dir: they need only GATEWAY_URL and a credential.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

from aiohttp import web
from pydantic import ValidationError

from gateway.client import commands as client_commands
from gateway.client.parsers import add_parsers as add_client_parsers
from gateway.edge.request_ids import configure_access_log
from gateway.edge.serving import Listen
from gateway.edge.serving import run as run_app
from gateway.settings import Settings, describe_errors

logger = logging.getLogger("gateway")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env_name = alias.choices[0] if alias is not None else name.upper()  # type: ignore[union-attr]
        default = field.default
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=str(env_name),
            help=f"{field.description or ''} [env {env_name}; default {default}]",
        )


def build_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is on Linux and macOS), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def enter_data_dir(settings: Settings) -> None:
    """Work from inside the data dir: whatever MLflow writes to "./mlruns" by default
    (it does, for registered models) lands there, never in the caller's folder.
    Settings hold absolute paths, so nothing else moves."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(settings.data_dir)


def check_port(settings: Settings) -> None:
    """Fail at once, in one line, when the gateway's address cannot be bound.

    Runs before any database is created or the demo model trained, so a taken
    port costs nothing. Binding as aiohttp will (SO_REUSEADDR) keeps the verdict
    the same; a process that takes the port in between is still caught by serve.
    """
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise SystemExit(cannot_serve(settings, exc)) from None


def cannot_serve(settings: Settings, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is in use; choose another with GATEWAY_PORT or --port"
    else:
        reason = exc.strerror or str(exc)
    return f"modelgw: cannot serve on {settings.host}:{settings.port}: {reason}"


def serve(settings: Settings, app: web.Application | None = None) -> None:
    from gateway.app import create_app

    check_port(settings)
    enter_data_dir(settings)
    app = app if app is not None else create_app(settings)
    configure_access_log()
    try:
        _run(settings, app)
    except OSError as exc:
        # Taken since check_port: say so instead of a traceback.
        raise SystemExit(cannot_serve(settings, exc)) from None


def _run(settings: Settings, app: web.Application) -> None:
    """Serve with the open-files limit raised, a cap on client connections, an idle
    timeout, and a stop that answers requests already on their way (edge/serving)."""
    listen = Listen(
        host=settings.host,
        port=settings.port,
        max_connections=settings.max_client_connections,
        keepalive_timeout=settings.keepalive_timeout,
        shutdown_timeout=settings.shutdown_timeout,
    )
    run_app(app, listen, new_event_loop)


def demo(settings: Settings) -> None:
    """Register the demo model, serve, deploy it, and print how to call it."""
    from gateway.app import create_app
    from gateway.deploy.demo import DEMO_MODEL, deploy_and_announce, train_and_register

    check_port(settings)  # before the model is trained: that takes seconds
    enter_data_dir(settings)
    logger.info("registering the demo model in %s", settings.tracking_uri)
    model = train_and_register(
        settings.tracking_uri, DEMO_MODEL, artifact_location=settings.data_dir / "artifacts"
    )
    app = create_app(settings)
    token = settings.admin_token.get_secret_value() if settings.admin_token else None

    async def deploy_when_up(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            deploy_and_announce(_base_url(settings), model, settings.deploy_timeout, token)
        )
        yield
        task.cancel()
        await asyncio.wait({task})

    app.cleanup_ctx.append(deploy_when_up)
    serve(settings, app)


def _base_url(settings: Settings) -> str:
    # A wildcard address is not one to call: the curl lines use loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(settings.host)
    if host is None:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelgw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {
        "serve": commands.add_parser("serve", help="run the gateway"),
        "demo": commands.add_parser("demo", help="register a demo model, serve and deploy it"),
    }
    for sub in subparsers.values():
        _add_setting_flags(sub)
    add_client_parsers(commands)
    args = parser.parse_args(argv)
    if args.command in client_commands.COMMANDS:
        return client_commands.run(args)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        _settings_error(subparsers[args.command], exc)
    configure_logging(settings.log_level)
    if args.command == "serve":
        serve(settings)
    else:
        demo(settings)
    return 0


def _settings_error(parser: argparse.ArgumentParser, exc: ValidationError) -> NoReturn:
    """The subcommand's usage, then one line per bad setting (no secret shown), exit 2."""
    parser.print_usage(sys.stderr)
    for line in describe_errors(exc):
        print(f"{parser.prog}: error: {line}", file=sys.stderr)
    raise SystemExit(2)
