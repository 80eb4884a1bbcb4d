"""A model version's baseline: metrics and training data from its MLflow run."""

from __future__ import annotations

import logging
import time

from gateway.deploy.registry import Registry
from gateway.errors import GatewayError
from gateway.records.stores.base import Baseline, Store

logger = logging.getLogger(__name__)


async def capture_baseline(
    registry: Registry, store: Store, name: str, version: str, run_id: str | None
) -> None:
    """Store the run's metrics as the baseline and its training data as the reference.

    Called after a deploy; a failure here is logged, never a failed deploy.
    """
    if not run_id:
        return
    try:
        metrics = await registry.run_metrics(run_id)
        if metrics:
            await store.set_baseline(name, version, Baseline(metrics, f"run {run_id}", time.time()))
        if await store.get_reference(name, version) is None:
            reference = await registry.reference_csv(run_id)
            if reference:
                await store.set_reference(name, version, reference)
    except (GatewayError, *store.transient_errors) as exc:  # type: ignore[misc]
        logger.warning("could not record the baseline of %s-%s: %s", name, version, exc)
