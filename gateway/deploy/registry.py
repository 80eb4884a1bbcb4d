"""The MLflow model registry, behind async methods that run the client in a thread."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gateway.errors import AliasNotFound, ModelNotFound, RegistryUnavailable, VersionNotFound

REFERENCE_ARTIFACT = "data/dataset.csv"
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
# MLflow answers an unknown alias with INVALID_PARAMETER_VALUE (a 400), not a 404.
_ALIAS_NOT_FOUND = _NOT_FOUND | {"INVALID_PARAMETER_VALUE"}


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str | None


def _is_not_found(exc: MlflowException) -> bool:
    return exc.error_code in _NOT_FOUND


class Registry:
    """Read-only access to the registry; every call runs off the event loop."""

    def __init__(self, tracking_uri: str) -> None:
        # Signature look-ups go through mlflow.models, which reads the global URIs.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    async def list_models(self) -> list[str]:
        return await self._call(self._list_models)

    async def list_versions(self, name: str) -> list[str]:
        return await self._call(self._list_versions, name)

    async def resolve(self, name: str, version: str) -> ModelVersionInfo:
        return await self._call(self._resolve, name, version)

    async def resolve_alias(self, name: str, alias: str) -> ModelVersionInfo:
        """The version `alias` points at now (read fresh: aliases move)."""
        return await self._call(self._resolve_alias, name, alias)

    async def signature(self, name: str, version: str) -> dict[str, Any]:
        return await self._call(self._signature, name, version)

    async def run_metrics(self, run_id: str) -> dict[str, float]:
        return await self._call(self._run_metrics, run_id)

    async def reference_csv(self, run_id: str) -> bytes | None:
        """The run's training data (`data/dataset.csv`, the original's convention)."""
        return await self._call(self._reference_csv, run_id)

    def _run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self._client.get_run(run_id).data.metrics)

    def _reference_csv(self, run_id: str) -> bytes | None:
        names = {a.path for a in self._client.list_artifacts(run_id, "data")}
        if REFERENCE_ARTIFACT not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self._client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp)
            return Path(path).read_bytes()

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except MlflowException as exc:
            # Not-found cases are turned into our errors inside each function;
            # anything else means the registry itself is unwell.
            raise RegistryUnavailable(f"the MLflow registry failed: {exc.message}") from exc

    def _list_models(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            page = self._client.search_registered_models(max_results=1000, page_token=token)
            names.extend(m.name for m in page)
            token = page.token
            if not token:
                return sorted(names)

    def _require_model(self, name: str) -> None:
        try:
            self._client.get_registered_model(name)
        except MlflowException as exc:
            if _is_not_found(exc):
                raise ModelNotFound(f"model {name!r} is not in the registry") from exc
            raise

    def _list_versions(self, name: str) -> list[str]:
        self._require_model(name)
        versions: list[str] = []
        token = None
        while True:
            # `name` is validated by names.check_model_name: no quote can reach the filter.
            page = self._client.search_model_versions(
                f"name='{name}'", max_results=1000, page_token=token
            )
            versions.extend(str(v.version) for v in page)
            token = page.token
            if not token:
                return sorted(versions, key=int)

    def _resolve(self, name: str, version: str) -> ModelVersionInfo:
        try:
            mv = self._client.get_model_version(name, version)
        except MlflowException as exc:
            if not _is_not_found(exc):
                raise
            self._require_model(name)
            raise VersionNotFound(f"model {name!r} has no version {version}") from exc
        return ModelVersionInfo(
            name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source
        )

    def _resolve_alias(self, name: str, alias: str) -> ModelVersionInfo:
        try:
            mv = self._client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code not in _ALIAS_NOT_FOUND:
                raise
            self._require_model(name)
            raise AliasNotFound(f"model {name!r} has no alias {alias!r}") from exc
        return ModelVersionInfo(
            name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source
        )

    def _signature(self, name: str, version: str) -> dict[str, Any]:
        self._resolve(name, version)
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
        sig = info.signature
        if sig is None:
            return {"inputs": None, "outputs": None, "params": None}
        return {
            "inputs": sig.inputs.to_dict() if sig.inputs is not None else None,
            "outputs": sig.outputs.to_dict() if sig.outputs is not None else None,
            "params": sig.params.to_dict() if sig.params is not None else None,
        }
