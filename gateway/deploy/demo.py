"""The demo model: a small scikit-learn classifier registered in the MLflow registry.

`make run` and the test suite both use it. Registration is idempotent: an
existing version is reused, so running the demo twice serves the same model.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
