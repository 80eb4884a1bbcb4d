"""A regression model on scikit-learn's diabetes data, registered in the session registry.

Its features are scaled floats that need all 17 significant digits, and `sex`
takes two values: the data set that showed logged values drifting from themselves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from gateway.deploy.demo import RegisteredModel
from tests.conftest import RegistryInfo

DIABETES_MODEL = "diabetes-progression"


@pytest.fixture(scope="session")
def diabetes_model(registry: RegistryInfo) -> RegisteredModel:
    """Trained and registered as the demo model is: metrics and `data/dataset.csv` in the run."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    data = load_diabetes(as_frame=True)
    model = LinearRegression().fit(data.data, data.target)
    predicted = model.predict(data.data)

    experiment = client.get_experiment_by_name("modelgw-quality-tests")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            "modelgw-quality-tests",
            artifact_location=str((registry.root / "artifacts").resolve()),
        )
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics(
            {
                "rmse": float(mean_squared_error(data.target, predicted) ** 0.5),
                "r2": float(r2_score(data.target, predicted)),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            dataset = Path(tmp) / "dataset.csv"
            data.frame.to_csv(dataset, index=False)  # the features and `target`
            mlflow.log_artifact(str(dataset), artifact_path="data")
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(data.data, predicted),
            pip_requirements=["scikit-learn", "pandas"],
            registered_model_name=DIABETES_MODEL,
        )
    versions = client.search_model_versions(
        f"name='{DIABETES_MODEL}' and run_id='{run.info.run_id}'"
    )
    return RegisteredModel(DIABETES_MODEL, str(max(int(v.version) for v in versions)),
                           run.info.run_id)  # fmt: skip
