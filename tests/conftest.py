"""Session fixtures: one temporary MLflow registry and one live gateway with a real deployment.

Deploying a real model costs seconds, so the suite shares one deployment of the
demo model (`wine-quality-1`: a hyphenated name on purpose) across its tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.deploy.demo import RegisteredModel, train_and_register
from tests.support import Gateway


@dataclass(frozen=True)
class RegistryInfo:
    tracking_uri: str
    root: Path
    v1: RegisteredModel
    v2: RegisteredModel


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> RegistryInfo:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    artifacts = root / "artifacts"  # never the working tree's ./mlruns
    v1 = train_and_register(uri, "wine-quality", artifact_location=artifacts, reuse=False)
    v2 = train_and_register(
        uri, "wine-quality", artifact_location=artifacts, reuse=False, shift=0.5
    )
    return RegistryInfo(uri, root, v1, v2)


@pytest.fixture(scope="session")
def gateway(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with `wine-quality-1` deployed, shared by the whole session."""
    gw = Gateway(tmp_path_factory.mktemp("gw") / "data", registry.tracking_uri).start()
    try:
        reply = gw.post("/deploy/wine-quality/1")
        assert reply.status == 201, (reply.body, gw.log())
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def local_model(registry: RegistryInfo):  # type: ignore[no-untyped-def]
    """The same model loaded in-process, to compare predictions with."""
    import mlflow

    return mlflow.pyfunc.load_model("models:/wine-quality/1")
