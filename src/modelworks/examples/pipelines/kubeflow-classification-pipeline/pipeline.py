"""Classification as a Kubeflow pipeline (kfp SDK 2): the reference system's shape, unchanged.

fetch -> validate -> preprocess -> train -> evaluate. modelworks supplies the parameters,
registers the `model` artifact and gates on the `metrics` artifact; the ModelCar replaces the
reference system's save step. Run on a cluster, the same file reads from S3 with the secret.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Metrics, Model, Output

IMAGE = "python:3.11"
PACKAGES = ["numpy", "scikit-learn", "skops"]


@dsl.component(base_image=IMAGE, packages_to_install=PACKAGES)
def fetch_data(data_source: dict, data: Output[Dataset]):
    """Copy the training CSV (modelworks resolves it to data_source['local_path'])."""
    import shutil

    shutil.copyfile(data_source["local_path"], data.path)


@dsl.component(base_image=IMAGE, packages_to_install=PACKAGES)
def validate_data(data: Input[Dataset]) -> int:
    """Fail early on an empty table, missing values or a single class."""
    import numpy as np

    table = np.loadtxt(data.path, delimiter=",", skiprows=1, ndmin=2)
    if len(table) < 10 or np.isnan(table).any():
        raise ValueError(f"{len(table)} rows, missing values: {bool(np.isnan(table).any())}")
    if len(np.unique(table[:, -1])) < 2:
        raise ValueError("the label column has a single class")
    return len(table)


@dsl.component(base_image=IMAGE, packages_to_install=PACKAGES)
def preprocess(
    data: Input[Dataset], hyperparameters: dict, train: Output[Dataset], test: Output[Dataset]
):
    """Split into stratified train and test tables (label last); numpy only, so it starts fast."""
    import numpy as np

    table = np.loadtxt(data.path, delimiter=",", skiprows=1, ndmin=2)
    rng = np.random.default_rng(0)
    share = float(hyperparameters.get("test_size", 0.25))
    is_test = np.zeros(len(table), dtype=bool)
    for label in np.unique(table[:, -1]):
        rows = rng.permutation(np.flatnonzero(table[:, -1] == label))
        is_test[rows[: round(len(rows) * share)]] = True
    part_train, part_test = table[~is_test], table[is_test]
    for table_part, artifact in ((part_train, train), (part_test, test)):
        with open(artifact.path, "wb") as fh:
            np.save(fh, table_part)


@dsl.component(base_image=IMAGE, packages_to_install=PACKAGES)
def train_model(
    train: Input[Dataset], hyperparameters: dict, model_name: str, model: Output[Model]
):
    """A scaled logistic regression, saved as skops (what the sklearn runtime serves)."""
    import numpy as np
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = np.load(train.path)
    estimator = make_pipeline(
        StandardScaler(),
        # kfp passes dict parameters as JSON numbers: cast what must be an int
        LogisticRegression(
            C=float(hyperparameters.get("C", 1.0)),
            max_iter=int(hyperparameters.get("max_iter", 1000)),
        ),
    )
    estimator.fit(table[:, :-1], table[:, -1].astype(np.int64))
    model.path = model.path + ".skops"
    sio.dump(estimator, model.path)
    model.metadata.update(framework="sklearn", model_name=model_name)


@dsl.component(base_image=IMAGE, packages_to_install=PACKAGES)
def evaluate_model(test: Input[Dataset], model: Input[Model], metrics: Output[Metrics]):
    """Accuracy and macro F1 on the held-out table, logged as the Metrics artifact."""
    import numpy as np
    import skops.io as sio
    from sklearn.metrics import accuracy_score, f1_score

    table = np.load(test.path)
    estimator = sio.load(model.path, trusted=sio.get_untrusted_types(file=model.path))
    predicted = estimator.predict(table[:, :-1])
    truth = table[:, -1].astype(np.int64)
    metrics.log_metric("accuracy", float(accuracy_score(truth, predicted)))
    metrics.log_metric("f1_macro", float(f1_score(truth, predicted, average="macro")))


@dsl.pipeline(name="kubeflow-classification-pipeline")
def classification_pipeline(
    data_source: dict, hyperparameters: dict, model_name: str, version: str = "dev"
):
    fetched = fetch_data(data_source=data_source)
    # On the cluster the data comes from S3 with these keys; locally this is ignored.
    kubernetes.use_secret_as_env(
        fetched,
        secret_name="s3-credentials",
        secret_key_to_env={
            "access_key": "AWS_ACCESS_KEY_ID",
            "secret_key": "AWS_SECRET_ACCESS_KEY",
        },
    )
    validated = validate_data(data=fetched.outputs["data"])
    split = preprocess(data=fetched.outputs["data"], hyperparameters=hyperparameters)
    split.after(validated)
    trained = train_model(
        train=split.outputs["train"], hyperparameters=hyperparameters, model_name=model_name
    )
    evaluate_model(test=split.outputs["test"], model=trained.outputs["model"])
