"""The wheel, installed with pip into a fresh venv, serves a model from any folder.

An editable install hides a wheel that leaves out subpackages or data files (one
shipped without `gateway.store`). So the set-up builds the wheel from this tree,
installs it with pip into a new venv, its dependencies pinned to the versions this
venv runs and fetched into a local wheelhouse (fast, and no other copy of the
gateway on the path), and runs `modelgw serve` from a folder outside the tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, REPO, free_port_range, request, unused_port, wait_until

# Generous bounds: building, installing and a first start that compiles every module
# it imports (the install skips byte-compiling) take minutes on a busy 2-core machine.
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

# Everything of a working tree a build does not read, or must not see.
_NOT_BUILT = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*_cache", ".hypothesis", "gateway-data",
                                    "mlruns", "bench-results")  # fmt: skip


def run(*argv: str | Path, timeout: float = 600, **kwargs: object) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout, **kwargs)  # type: ignore[call-overload]  # fmt: skip
    assert result.returncode == 0, (
        f"{argv} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: pip leaves build/ and *.egg-info beside the sources it builds.
    source = tmp_path_factory.mktemp("source") / "modelgw"
    shutil.copytree(REPO, source, ignore=_NOT_BUILT, symlinks=True)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, source)
    (built,) = dist.glob("modelgw-*.whl")
    return built


@pytest.fixture(scope="module")
def wheelhouse(
    wheel: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The wheel's dependencies at the versions this venv runs, downloaded once.

    Kept in pytest's cache under a hash of the pins and the wheel's requirements:
    a dependency change downloads again; otherwise no network is needed.
    """
    frozen = run(sys.executable, "-m", "pip", "freeze", "--exclude-editable")
    # Pinned by name only: a direct reference ("x @ file://...") cannot be a constraint.
    pins = "".join(line + "\n" for line in frozen.splitlines()
                   if " @ " not in line and not line.lower().startswith("modelgw"))  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip
    digest = hashlib.sha256("\n".join([pins, *requires]).encode()).hexdigest()
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir("wheelhouse") if cache is not None else tmp_path_factory.mktemp("wheelhouse")
    house = root / digest[:16]
    if not (house / "complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir()
        (house / "constraints.txt").write_text(pins)
        run(sys.executable, "-m", "pip", "download", "--quiet", "-d", house,
            "-c", house / "constraints.txt", wheel)  # fmt: skip
        (house / wheel.name).unlink(missing_ok=True)  # the wheel itself comes from the build
        (house / "complete").touch()
    return house


@pytest.fixture(scope="module")
def venv(wheel: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel and its declared dependencies, installed by pip."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env_dir)
    # This venv's pip installs into the new one (--python): no pip bootstrap to wait for.
    run(sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "--quiet",
        "--no-index", "--no-compile", "--find-links", wheelhouse, wheel, cwd=env_dir.parent)  # fmt: skip
    return env_dir


def clean_env(venv: Path) -> dict[str, str]:
    """Our environment without anything that points Python at this tree or this venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MLFLOW_TRACKING_URI"}
           and not k.startswith(("GATEWAY_", "PYTEST_"))}  # fmt: skip
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def test_the_wheel_holds_every_package_and_data_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packages = [p.parent.relative_to(REPO).as_posix() for top in ("gateway", "supervisor")
                for p in (REPO / top).rglob("__init__.py")]  # fmt: skip
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel: {missing}"
    assert {"gateway/type_mapping.json", "supervisor/schema.sql", "gateway/py.typed"} <= names


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_installed_gateway_is_the_wheels(venv: Path, elsewhere: Path) -> None:
    where = run(venv / "bin" / "python", "-c", "import gateway, supervisor; print(gateway.__file__)",
                cwd=elsewhere, env=clean_env(venv))  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv), where


@pytest.fixture
def served(venv: Path, registry: RegistryInfo, elsewhere: Path) -> Iterator[int]:
    """`modelgw serve` of the venv, started from a folder outside the tree."""
    port, (first, last) = unused_port(), free_port_range(3)
    env = clean_env(venv)
    env.update(MLFLOW_TRACKING_URI=registry.tracking_uri, GATEWAY_PORT=str(port),
               START_PORT=str(first), END_PORT=str(last), GATEWAY_STOP_TIMEOUT="3",
               GATEWAY_DEPLOY_TIMEOUT="240",
               GATEWAY_DATA_DIR=str(elsewhere / "data"))  # fmt: skip
    log_path = elsewhere / "modelgw.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([venv / "bin" / "modelgw", "serve"], cwd=elsewhere, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"modelgw exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            return request(port, "GET", "/health").status == 200
        except OSError:
            return False

    try:
        wait_until(up, 240, 0.1, f"the installed gateway to answer /health (log: {log_path})")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_the_installed_gateway_deploys_the_demo_model_and_predicts(served: int) -> None:
    assert request(served, "GET", "/type_mapping").status == 200  # a data file of the wheel
    deployed = request(served, "POST", "/deploy/wine-quality/1", timeout=300)
    assert deployed.status in (200, 201), deployed.body

    def predicted() -> object:
        reply = request(served, "POST", "/wine-quality-1", json_body=ONE_ROW)
        return reply.json() if reply.status == 200 else None

    answer = wait_until(predicted, 240, 0.2, "a prediction from the installed gateway")
    assert len(answer["predictions"]) == 1
