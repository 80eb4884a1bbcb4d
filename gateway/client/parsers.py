"""The client's subcommands and flags, added to the `modelgw` parser."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.client.transport import DEFAULT_URL

CONNECTION_HELP = (
    f"Talks to a running gateway: GATEWAY_URL (default {DEFAULT_URL}); credentials from"
    " GATEWAY_ADMIN_TOKEN (bearer), or GATEWAY_USER and GATEWAY_PASSWORD (Basic, e.g."
    " through nginx); SSL_CERT_FILE trusts a self-signed certificate."
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text}")
    return value


def _connection() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        metavar="URL",
        help=f"the gateway's address [env GATEWAY_URL; default {DEFAULT_URL}]",
    )
    parent.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="seconds to wait for an answer (deploy and scale: 900, else 120)",
    )
    return parent  # fmt: skip


def _json_output() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", dest="as_json", action="store_true",
                        help="print the gateway's answer as JSON, for scripts")  # fmt: skip
    return parent


def add_parsers(commands: Any) -> dict[str, argparse.ArgumentParser]:
    """Add ls, deploy, scale, undeploy, predict, logs and report to `commands`."""
    both = [_connection(), _json_output()]
    add = commands.add_parser
    parsers = {
        "ls": add("ls", parents=both, help="list deployments", description=CONNECTION_HELP),
    }

    p = parsers["deploy"] = add("deploy", parents=both, help="deploy a model version or alias",
                                description=CONNECTION_HELP)  # fmt: skip
    p.add_argument("model", metavar="MODEL")
    p.add_argument("target", metavar="VERSION|@ALIAS", help="a version (3) or an alias (@champion)")
    p.add_argument("--replicas", type=_positive_int, metavar="N")
    p.add_argument("--max-batch-size", type=_positive_int, metavar="N",
                   help="adaptive batching of concurrent calls; 1 turns it off")  # fmt: skip
    p.add_argument("--max-batch-delay-ms", type=_non_negative_int, metavar="MS")
    p.add_argument(
        "--replace",
        action="store_true",
        help="new backends for a deployed key, switched to without downtime",
    )
    p.add_argument("--wait", action="store_true",
                   help="show progress until ready (or the failure and the backend's last"
                        " lines); without it, return once the gateway lists a new key as"
                        " starting")  # fmt: skip

    p = parsers["scale"] = add("scale", parents=both, help="change a deployment's replicas",
                               description=CONNECTION_HELP)  # fmt: skip
    p.add_argument("key", metavar="KEY")
    p.add_argument("replicas", metavar="N", type=_positive_int)

    p = parsers["undeploy"] = add("undeploy", parents=both, help="stop a deployment",
                                  description=CONNECTION_HELP)  # fmt: skip
    p.add_argument("key", metavar="KEY")

    p = parsers["predict"] = add(
        "predict",
        parents=[_connection()],
        description=CONNECTION_HELP,
        help="predictions for a CSV or JSON file, sent in chunks",
    )
    p.add_argument("key", metavar="KEY")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", dest="input_csv", metavar="FILE", help="CSV with a header line ('-' reads stdin)"
    )
    source.add_argument(
        "--json",
        dest="input_json",
        metavar="FILE",
        help="JSON lines (one record per line) or one MLflow JSON document",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="rows per request (default 1000)",
    )
    p.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        help="predictions as CSV or JSON lines (default: like the input)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")  # fmt: skip

    p = parsers["logs"] = add("logs", parents=both, help="a backend's recent log lines",
                              description=CONNECTION_HELP)  # fmt: skip
    p.add_argument("key", metavar="KEY")
    p.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")
    p.add_argument("--replica", type=_non_negative_int, metavar="N")
    p.add_argument("--lines", type=_positive_int, metavar="N", default=100)
    p.add_argument("--interval", type=_seconds, default=1.0, metavar="S",
                   help="seconds between polls with -f (default 1)")  # fmt: skip

    p = parsers["report"] = add(
        "report",
        parents=both,
        description=CONNECTION_HELP,
        help="the degradation report (zip), or its summary with --json",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to save the zip ('-' for stdout; default: the gateway's name)",
    )
    p.add_argument("--tolerance", type=float, metavar="R",
                   help="relative metric decline still counted as fine (default 0.05)")  # fmt: skip
    return parsers
