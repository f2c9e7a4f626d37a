"""The classifier alone, solved: multinomial logistic regression with an L2 penalty on the
frozen body's cached features, minimised by L-BFGS to convergence.

When only a network's last dense layer trains, on features that do not change between
epochs (``bottleneck``), training is a convex problem with one answer. A few epochs of the
run's optimizer stop somewhere short of it, at a point that depends on the learning rate
and on where the layer started (a previous task's classifier starts confidently wrong).
Solved instead, the result depends on the features and the penalty alone, the same in
every backend: the objective is scikit-learn's ``LogisticRegression`` (``C`` as there)::

    mean over images of cross-entropy(W x + b, y)  +  |W|^2 / (2 C N)

with the bias unpenalised. The solve runs in float64 on the host (SciPy's L-BFGS-B);
the features come from whichever backend computed them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from cnnspec.graph.dag import Graph
from cnnspec.layers.core import Dense
from cnnspec.spec.grammar import INPUT
from cnnspec.spec.training import ClassifierSolve, TrainConfig


@dataclasses.dataclass(frozen=True)
class Solved:
    """What the solver did, as the run records it."""

    layer: str
    weight: np.ndarray  # units x features, float32
    bias: np.ndarray | None
    iterations: int
    loss: float  # mean cross-entropy on the training features at the solution
    accuracy: float  # on the training features
    objective: float  # loss plus the penalty
    c: float
    converged: bool
    message: str
    gradient: float  # the largest gradient component at the solution
    seconds: float

    def record(self, images: int) -> dict[str, Any]:
        return {
            "layer": self.layer, "solver": "L-BFGS (multinomial logistic regression, L2)", "c": self.c, "l2": 1.0 / (self.c * images),
            "images": images, "features": int(self.weight.shape[1]), "iterations": self.iterations, "loss": self.loss,
            "objective": self.objective, "converged": self.converged, "message": self.message, "gradient": self.gradient, "seconds": round(self.seconds, 3),
        }


def why_not(head: Graph, config: TrainConfig) -> str:
    """Why ``head`` (the layers trained on cached features) cannot be solved; '' when it can."""
    *before, last = head.nodes
    if not isinstance(last.layer, Dense) or last.name != head.output:
        return f"the trained layers end in '{last.name}', not a dense classifier"
    from cnnspec.layers.activation import Softmax

    activation = last.layer.activation
    if activation is not None and not isinstance(activation, Softmax):  # a softmax's logits are the layer's linear part
        return f"the classifier '{last.name}' has a {activation.kind} activation"
    weighted = [node.name for node in before if node.layer.weights(head.input_shapes(node))]
    if weighted:
        return f"layers with weights train before the classifier ({', '.join(weighted)})"
    if config.loss != "cross_entropy" or config.label_smoothing:
        return f"the loss is {config.loss}{' with label smoothing' if config.label_smoothing else ''}, not plain cross-entropy"
    return ""


def classifier_input(head: Graph) -> str:
    """The node whose output the classifier reads (INPUT: the cached features themselves)."""
    return head.nodes[-1].inputs[0]


def features(session: Any, head: Graph, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The classifier's inputs for cached features ``x`` (N x ...), as an N x D float32
    matrix: the features themselves, or the output of the weightless layers between them
    and the classifier (a flatten, a dropout that is identity at evaluation, a pooling),
    computed by the head's own session."""
    source = classifier_input(head)
    if source == INPUT:
        return np.asarray(x, np.float32).reshape(len(x), -1)
    parts = [np.asarray(session.activations(np.asarray(x[i : i + batch_size]), [source])[source], np.float32) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).reshape(len(x), -1)


def solve(x: np.ndarray, y: np.ndarray, classes: int, settings: ClassifierSolve, layer: str, bias: bool = True) -> Solved:
    """The weights minimising the objective above for features ``x`` (N x D) and labels
    ``y``, started from zero (the optimum is unique, so where the layer started does not
    matter)."""
    from scipy.optimize import minimize

    started = time.perf_counter()
    count, width = x.shape
    x64 = np.asarray(x, np.float64)
    onehot = np.zeros((count, classes))
    onehot[np.arange(count), y] = 1.0
    strength = 1.0 / (settings.c * count)

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = theta[: classes * width].reshape(classes, width)
        b = theta[classes * width :] if bias else np.zeros(classes)
        return w, b

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = unpack(theta)
        logits = x64 @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -(onehot * log_p).sum() / count + 0.5 * strength * float((w * w).sum())
        delta = (np.exp(log_p) - onehot) / count
        grad_w = delta.T @ x64 + strength * w
        grad = np.concatenate([grad_w.ravel(), delta.sum(axis=0)]) if bias else grad_w.ravel()
        return float(loss), grad

    theta = np.zeros(classes * width + (classes if bias else 0))
    iterations, left = 0, settings.max_iterations
    for _ in range(4):  # a line search that stalls at float precision restarts from where it stopped (a fresh curvature memory)
        result = minimize(objective, theta, jac=True, method="L-BFGS-B",
                          options={"maxiter": left, "gtol": settings.tolerance, "ftol": 64 * np.finfo(float).eps, "maxls": 50})
        theta, iterations, left = result.x, iterations + int(result.nit), left - int(result.nit)
        if result.success or result.nit == 0 or left <= 0:
            break
    gradient = float(np.abs(objective(theta)[1]).max())
    w, b = unpack(theta)
    logits = x64 @ w.T + b
    shifted = logits - logits.max(axis=1, keepdims=True)
    cross_entropy = float(-(shifted[np.arange(count), y] - np.log(np.exp(shifted).sum(axis=1))).mean())
    return Solved(
        layer=layer, weight=w.astype(np.float32), bias=b.astype(np.float32) if bias else None, iterations=iterations,
        loss=cross_entropy, accuracy=float((logits.argmax(axis=1) == y).mean()), objective=float(result.fun), c=settings.c,
        # converged: the solver's own test, or a gradient within scikit-learn's default tolerance (1e-4)
        converged=bool(result.success) or gradient <= max(settings.tolerance, 1e-4), message=str(result.message),
        gradient=gradient, seconds=time.perf_counter() - started,
    )
