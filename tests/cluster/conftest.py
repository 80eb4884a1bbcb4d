"""Session fixtures of the cluster tests: one Ray cluster, one `mlflow server`.

Both start only when a test asks for them, and such tests are marked
`needs_private_netns` (see harness.py): elsewhere they are skipped first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.deploy.demo import RegisteredModel, train_and_register
from tests.cluster.harness import (
    MlflowServer,
    RayTestCluster,
    mlflow_server,
    shared_cluster,
    shutdown_shared_cluster,
)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayTestCluster]:
    yield shared_cluster()
    shutdown_shared_cluster()


@dataclass(frozen=True)
class ServedRegistry:
    """An `mlflow server` every node reaches, with the wine model registered through it."""

    server: MlflowServer
    wine: RegisteredModel

    @property
    def uri(self) -> str:
        return self.server.uri


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRegistry]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        # No artifact location: the server's own (mlflow-artifacts:/), served over HTTP.
        wine = train_and_register(server.uri, "wine-quality", reuse=False)
        yield ServedRegistry(server, wine)


@pytest.fixture(scope="session")
def served_model(served_registry: ServedRegistry) -> Any:
    """The registered model loaded in this process, to compare predictions with."""
    import mlflow

    mlflow.set_tracking_uri(served_registry.uri)
    return mlflow.pyfunc.load_model(f"models:/wine-quality/{served_registry.wine.version}")
