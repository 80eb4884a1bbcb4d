"""A gateway of the client tests' own (nothing deployed at first), and a way to run
`modelgw` in-process with its output and exit code captured."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway import cli
from tests.conftest import RegistryInfo
from tests.support import Gateway


@pytest.fixture(scope="module")
def own_gateway(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("client-gw") / "data", registry.tracking_uri).start()
    try:
        yield gw
    finally:
        gw.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str


def modelgw(*argv: str) -> Result:
    """`modelgw ARGV...` in this process (the environment is the test's): its exit code,
    stdout and stderr. Usage errors exit through argparse's SystemExit, as on a shell."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())
