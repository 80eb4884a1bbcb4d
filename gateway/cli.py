"""The `modelgw` command: `serve` runs the gateway, `demo` runs it with a demo model.

Every setting is an environment variable (see settings.py); a flag given here
overrides it. Settings are built once and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.deploy.demo import DEMO_ROW
from gateway.edge.request_ids import JsonAccessLogger, access_logger, configure_access_log
from gateway.settings import Settings

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


def serve(settings: Settings, app: web.Application | None = None) -> None:
    from gateway.app import create_app

    enter_data_dir(settings)
    app = app if app is not None else create_app(settings)
    configure_access_log()
    try:
        _run(settings, app)
    except OSError as exc:
        # Most often the port is taken: say so instead of a traceback.
        raise SystemExit(f"cannot serve on {settings.host}:{settings.port}: {exc}") from None


def _run(settings: Settings, app: web.Application) -> None:
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log_class=JsonAccessLogger,
        access_log=access_logger,
        loop=new_event_loop(),
        print=lambda msg: logger.info("%s", msg),
    )


def demo(settings: Settings) -> None:
    """Register the demo model, serve, deploy it, and print how to call it."""
    from gateway.app import create_app
    from gateway.deploy.demo import DEMO_MODEL, train_and_register

    enter_data_dir(settings)
    logger.info("registering the demo model in %s", settings.tracking_uri)
    model = train_and_register(
        settings.tracking_uri, DEMO_MODEL, artifact_location=settings.data_dir / "artifacts"
    )
    app = create_app(settings)

    async def deploy_when_up(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_deploy_demo(settings, model.name, model.version))
        yield
        task.cancel()
        await asyncio.wait({task})

    app.cleanup_ctx.append(deploy_when_up)
    serve(settings, app)


async def _deploy_demo(settings: Settings, name: str, version: str) -> None:
    import aiohttp

    base = f"http://{settings.host}:{settings.port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{base}/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        logger.info("deploying %s version %s ...", name, version)
        async with session.post(f"{base}/deploy/{name}/{version}") as resp:
            body = await resp.json()
            if resp.status >= 400:
                logger.error("demo deploy failed: %s", body)
                return
    key = f"{name}-{version}"
    row = json.dumps(
        {"dataframe_split": {"columns": list(DEMO_ROW), "data": [list(DEMO_ROW.values())]}}
    )
    print(
        f"""
modelgw is serving {key} at {base}. Try:

  curl -s {base}/get_deployed_models
  curl -s -X POST {base}/{key} -H 'Content-Type: application/json' \\
       -d '{row}'
  curl -s {base}/model/{key}/signature

Press Ctrl-C to stop the gateway and its backends.
""",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelgw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway")
    demo_parser = commands.add_parser("demo", help="register a demo model, serve and deploy it")
    for p in (serve_parser, demo_parser):
        _add_setting_flags(p)
    args = parser.parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level)
    if args.command == "serve":
        serve(settings)
    else:
        demo(settings)
    return 0
