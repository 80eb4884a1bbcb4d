"""The demo model: a small scikit-learn classifier registered in the MLflow registry.

`make run` and the test suite both use it. Registration is idempotent: an
existing version is reused, so running the demo twice serves the same model.
Once the gateway is up, `deploy_and_announce` deploys it through the gateway's own
API and prints curl lines that work as printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

logger = logging.getLogger(__name__)

DEMO_MODEL = "wine-quality"
EXPERIMENT = "modelgw-demo"
# One wine from the data set, for the curl lines `make run` prints.
DEMO_ROW = {
    "alcohol": 13.2, "malic_acid": 1.78, "ash": 2.14, "alcalinity_of_ash": 11.2,
    "magnesium": 100.0, "total_phenols": 2.65, "flavanoids": 2.76,
    "nonflavanoid_phenols": 0.26, "proanthocyanins": 1.28, "color_intensity": 4.38,
    "hue": 1.05, "od280_od315_of_diluted_wines": 3.4, "proline": 1050.0,
}  # fmt: skip


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str


def train_and_register(
    tracking_uri: str,
    name: str = DEMO_MODEL,
    *,
    artifact_location: Path | None = None,
    reuse: bool = True,
    shift: float = 0.0,
) -> RegisteredModel:
    """Train a logistic regression on scikit-learn's wine data and register it.

    The run carries what the data plane reads: metrics (accuracy, f1, ...) and
    the training data as the artifact `data/dataset.csv`. Blocking: call it in
    a thread from async code.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if reuse:
        versions = client.search_model_versions(f"name='{name}'")
        if versions:
            latest = max(versions, key=lambda v: int(v.version))
            logger.info("reusing %s version %s", name, latest.version)
            return RegisteredModel(name, str(latest.version), latest.run_id or "")

    data = load_wine(as_frame=True)
    features: pd.DataFrame = data.data.rename(columns=lambda c: c.replace("/", "_"))
    features = features + shift
    x_train, x_test, y_train, y_test = train_test_split(
        features, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        # Without an explicit location MLflow writes artifacts to ./mlruns.
        location = str(artifact_location.resolve()) if artifact_location else None
        client.create_experiment(EXPERIMENT, artifact_location=location)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        mlflow.log_metrics(
            {
                "accuracy": float(accuracy_score(y_test, predicted)),
                "f1_score": float(f1_score(y_test, predicted, average="weighted")),
                "precision": float(precision_score(y_test, predicted, average="weighted")),
                "recall": float(recall_score(y_test, predicted, average="weighted")),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            dataset = Path(tmp) / "dataset.csv"
            x_train.assign(target=y_train).to_csv(dataset, index=False)
            mlflow.log_artifact(str(dataset), artifact_path="data")
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train, predicted),
            # Explicit requirements skip MLflow's slow import-sniffing subprocess.
            pip_requirements=["scikit-learn", "pandas"],
            registered_model_name=name,
        )
    versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
    version = max(int(v.version) for v in versions)
    logger.info("registered %s version %s (run %s)", name, version, run.info.run_id)
    return RegisteredModel(name, str(version), run.info.run_id)


async def deploy_and_announce(
    base: str, model: RegisteredModel, timeout: float, token: str | None = None
) -> bool:
    """Deploy the demo model and print how to call it, once it answers a prediction.

    A deployment restored from an earlier run may still be starting when the
    deploy call returns, so the curl lines wait for a real prediction to succeed
    (within `timeout` seconds); otherwise a clear error is logged instead.
    """
    key = f"{model.name}-{model.version}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # The deploy call may itself wait for the backend: give it the whole budget.
    client_timeout = aiohttp.ClientTimeout(total=timeout + 30)
    async with aiohttp.ClientSession(headers=headers, timeout=client_timeout) as session:
        if not await _answers(session, "GET", f"{base}/health", None, deadline):
            logger.error("the gateway did not answer %s/health within %.0f s", base, timeout)
            return False
        logger.info("deploying %s version %s ...", model.name, model.version)
        try:
            async with session.post(f"{base}/deploy/{model.name}/{model.version}") as resp:
                text = await resp.text()
                if resp.status >= 400:
                    logger.error("demo deploy failed (%s): %s", resp.status, text)
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.error("demo deploy failed: %r", exc)
            return False
        if not await _answers(session, "POST", f"{base}/{key}", demo_request(), deadline):
            logger.error(
                "%s did not answer a prediction within %.0f s (GATEWAY_DEPLOY_TIMEOUT); "
                "see %s/get_deployed_models and the backend's log",
                key,
                timeout,
                base,
            )
            return False
    print(_try_this(base, key, authorized=token is not None), flush=True)
    return True


def demo_request() -> dict[str, object]:
    """A one-row inference body of the demo model (MLflow's `dataframe_split`)."""
    return {"dataframe_split": {"columns": list(DEMO_ROW), "data": [list(DEMO_ROW.values())]}}


async def _answers(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: dict[str, object] | None,
    deadline: float,
) -> bool:
    """Call `url` until it answers 200 or the deadline passes."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with session.request(method, url, json=body) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass  # not listening yet
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


def _try_this(base: str, key: str, *, authorized: bool) -> str:
    row = json.dumps(demo_request())
    auth = ' -H "Authorization: Bearer $GATEWAY_ADMIN_TOKEN"' if authorized else ""
    return f"""
modelgw is serving {key} at {base}. Try:

  curl -s{auth} {base}/get_deployed_models
  curl -s{auth} -X POST {base}/{key} -H 'Content-Type: application/json' \\
       -d '{row}'
  curl -s{auth} {base}/model/{key}/signature

Press Ctrl-C to stop the gateway and its backends.
"""
