"""Classification: a CSV whose last column is the class label."""

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def prepare(data_path, params):
    with open(data_path) as fh:
        header = fh.readline().strip().split(",")
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1].astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=params.get("test_size", 0.25), random_state=0, stratify=y
    )
    return {
        "X_train": X_train,
        "X_test": X_test,
        "y_train": y_train,
        "y_test": y_test,
        "feature_names": header[:-1],
    }


def train(data, params):
    if params.get("model") == "random_forest":
        model = RandomForestClassifier(
            n_estimators=params.get("n_estimators", 50),
            max_depth=params.get("max_depth"),
            random_state=0,
            n_jobs=1,
        )
    else:
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=params.get("C", 1.0), max_iter=params.get("max_iter", 1000)),
        )
    return model.fit(data["X_train"], data["y_train"])


def evaluate(model, data):
    predicted = model.predict(data["X_test"])
    return {
        "accuracy": accuracy_score(data["y_test"], predicted),
        "f1_macro": f1_score(data["y_test"], predicted, average="macro"),
    }
