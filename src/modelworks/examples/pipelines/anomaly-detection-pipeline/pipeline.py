"""Anomaly detection: sensor readings; the last column (1 = anomaly) is used only to evaluate."""

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, precision_score, recall_score


def prepare(data_path, params):
    with open(data_path) as fh:
        header = fh.readline().strip().split(",")
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, labels = table[:, :-1], table[:, -1].astype(np.int64)
    return {"X_train": X, "X_test": X, "y_test": labels, "feature_names": header[:-1]}


def train(data, params):
    model = IsolationForest(
        n_estimators=params.get("n_estimators", 100),
        contamination=params.get("contamination", 0.05),
        random_state=0,
    )
    return model.fit(data["X_train"])


def evaluate(model, data):
    flagged = (model.predict(data["X_test"]) == -1).astype(np.int64)
    truth = data["y_test"]
    return {
        "precision": precision_score(truth, flagged, zero_division=0),
        "recall": recall_score(truth, flagged, zero_division=0),
        "f1": f1_score(truth, flagged, zero_division=0),
    }
