"""Demand forecasting: daily rows of features and the demand to predict (last column)."""

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def prepare(data_path, params):
    with open(data_path) as fh:
        header = fh.readline().strip().split(",")
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1]
    # Time series: hold out the most recent days instead of a random split.
    cut = int(len(table) * (1 - params.get("holdout", 0.2)))
    return {
        "X_train": X[:cut],
        "X_test": X[cut:],
        "y_train": y[:cut],
        "y_test": y[cut:],
        "feature_names": header[:-1],
    }


def train(data, params):
    if params.get("model") == "gradient_boosting":
        model = GradientBoostingRegressor(
            n_estimators=params.get("n_estimators", 100),
            max_depth=params.get("max_depth", 3),
            random_state=0,
        )
    else:
        model = Ridge(alpha=params.get("alpha", 1.0))
    return model.fit(data["X_train"], data["y_train"])


def evaluate(model, data):
    predicted = model.predict(data["X_test"])
    return {
        "rmse": float(np.sqrt(mean_squared_error(data["y_test"], predicted))),
        "mae": mean_absolute_error(data["y_test"], predicted),
        "r2": r2_score(data["y_test"], predicted),
    }
