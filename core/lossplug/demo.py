"""``lossplug demo``: the center-loss picture on scikit-learn's digits, in one command.

Two classifiers with the same architecture (64 pixels -> 128 -> 64 -> a 2-D
``features`` layer -> 10 logits) are trained on the 8x8 digits bundled with
scikit-learn (no downloads):

* ``cross-entropy``: Keras' ``sparse_categorical_crossentropy`` alone;
* ``label smoothing + center``: ``label_smoothing`` plus
  ``lossplug.use("center", weight=..., num_classes=10)``, which pulls each
  sample's 2-D feature towards a trainable centre of its class.

The demo prints every loss term per epoch (as ``History`` logs it), the test
accuracy of both models and how tight the classes are in feature space, and
writes two PNG figures: the 2-D test features of both models coloured by class,
and the per-term loss curves.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .errors import LossplugError

REQUIRED_PLUGINS = {"label_smoothing": "lossplug-label-smoothing", "center": "lossplug-center"}
NUM_CLASSES = 10
CENTER_WEIGHT = 0.5
EPSILON = 0.1
SEED = 0
LEARNING_RATE = 1e-2
BASELINE = "cross-entropy"
CENTER = "label smoothing + center"
#: the terms of each model, in compile order (their History keys)
TERMS = {BASELINE: ["sparse_categorical_crossentropy"], CENTER: ["label_smoothing", "center"]}


class DemoError(LossplugError, RuntimeError):
    """The demo cannot run here (a plugin or an optional dependency is missing)."""


def check_requirements() -> None:
    """Fail early, before importing TensorFlow, naming what to install."""
    from .registry import registry

    missing = [name for name in REQUIRED_PLUGINS if name not in registry.names()]
    if missing:
        packages = " ".join(REQUIRED_PLUGINS[name] for name in missing)
        local = " ".join(f"-e plugins/{REQUIRED_PLUGINS[name]}" for name in missing)
        raise DemoError(
            f"the demo needs the loss plugin(s) {', '.join(map(repr, missing))}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed (or disabled by "
            f"LOSSPLUG_DISABLE). Install: pip install {packages}   (from a clone of the "
            f"lossplug repository: pip install {local})"
        )
    for name in REQUIRED_PLUGINS:
        registry.spec(name)  # a plugin that fails to import says so here, with its error
    absent = []
    for module, package in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            __import__(module)
        except ImportError:
            absent.append(package)
    if absent:
        raise DemoError(
            f"the demo needs {' and '.join(absent)}: pip install 'lossplug[demo]' "
            f"(or pip install {' '.join(absent)})"
        )


# ----------------------------------------------------------------------------- data
def load_data(smoke: bool) -> tuple[Any, Any, Any, Any]:
    """Digits (1797 8x8 images) scaled to [0, 1], split 75/25 stratified; tiny with ``smoke``."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    y = y.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SEED
    )
    if smoke:
        x_train, y_train = x_train[:320], y_train[:320]
        x_test, y_test = x_test[:160], y_test[:160]
    return x_train, np.asarray(y_train), x_test, np.asarray(y_test)


# ----------------------------------------------------------------------------- models
def build_model(name: str) -> Any:
    """pixels -> 128 -> 64 -> features (2-D, linear) -> logits (10)."""
    import keras

    import lossplug

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(128, activation="relu", name="hidden_1")(inputs)
    hidden = keras.layers.Dense(64, activation="relu", name="hidden_2")(hidden)
    features = keras.layers.Dense(2, name="features")(hidden)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(features)
    return lossplug.LossModel(inputs, logits, expose=["features"], name=name)


def compile_models(baseline: Any, center: Any) -> None:
    import keras

    import lossplug

    def accuracy() -> Any:
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    baseline.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[accuracy()],
    )
    center.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=[
            lossplug.use("label_smoothing", epsilon=EPSILON),
            lossplug.use("center", weight=CENTER_WEIGHT, num_classes=NUM_CLASSES),
        ],
        metrics=[accuracy()],
    )


def _progress_callback(progress: Any, task: Any, steps_per_epoch: int, epochs: int) -> Any:
    import keras

    class RichProgress(keras.callbacks.Callback):
        """Advances a rich progress bar every batch and shows the latest loss."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            loss = (logs or {}).get("loss")
            info = f"epoch {self.epoch + 1}/{epochs}"
            if loss is not None:
                info += f"  loss {float(loss):.4f}"
            progress.update(task, advance=1, info=info)

    return RichProgress()


def train(
    models: dict[str, Any], data: tuple[Any, ...], epochs: int, batch_size: int, console: Any
) -> dict[str, dict[str, list[float]]]:
    """Fit every model with a rich progress bar each; return their ``History`` dicts."""
    import math

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    x_train, y_train, x_test, y_test = data
    steps = math.ceil(len(x_train) / batch_size)
    histories = {}
    with Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as progress:
        tasks = {
            name: progress.add_task(name, total=steps * epochs, info="waiting") for name in models
        }
        for name, model in models.items():
            callback = _progress_callback(progress, tasks[name], steps, epochs)
            history = model.fit(
                x_train,
                y_train,
                validation_data=(x_test, y_test),
                epochs=epochs,
                batch_size=batch_size,
                shuffle=True,
                verbose=0,
                callbacks=[callback],
            )
            histories[name] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
            final = histories[name]
            progress.update(
                tasks[name],
                info=f"done  loss {final['loss'][-1]:.4f}  val_accuracy "
                f"{final['val_accuracy'][-1]:.3f}",
            )
    return histories


# ----------------------------------------------------------------------------- numbers
def term_columns(history: dict[str, list[float]], first: list[str] = ()) -> list[str]:
    """History keys of the training side: ``loss``, the terms ``first``, the rest, accuracy last."""
    keys = [k for k in history if not k.startswith("val_")]
    head = [k for k in ("loss", *first) if k in keys]
    rest = [k for k in keys if k not in head and k != "accuracy"]
    return head + rest + (["accuracy"] if "accuracy" in keys else [])


def class_spread(features: Any, labels: Any) -> float:
    """Mean distance of a feature to its class mean, over the mean distance between class means.

    Scale-free (multiplying every feature by a constant leaves it unchanged);
    smaller means tighter, better separated classes.
    """
    import numpy as np

    features = np.asarray(features, dtype="float64")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    index = np.searchsorted(classes, labels)
    within = np.linalg.norm(features - means[index], axis=1).mean()
    gaps = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    between = gaps[np.triu_indices(len(classes), k=1)].mean() if len(classes) > 1 else 0.0
    return float(within / between) if between > 0 else float("inf")


def epoch_table(title: str, history: dict[str, list[float]], first: list[str] = ()) -> Any:
    from rich.table import Table

    columns = term_columns(history, first)
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column("epoch", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for column in ("val_loss", "val_accuracy"):
        if column in history:
            table.add_column(column, justify="right", style="dim")
    epochs = len(history["loss"])
    for epoch in range(epochs):
        cells = [str(epoch + 1)]
        cells += [f"{history[c][epoch]:.4f}" for c in columns]
        cells += [f"{history[c][epoch]:.4f}" for c in ("val_loss", "val_accuracy") if c in history]
        table.add_row(*cells)
    return table


# ----------------------------------------------------------------------------- figures
def learned_centers(model: Any) -> Any:
    """The ``center`` plugin's class centres (its state variable ``centers``), or None."""
    import keras

    for weight in model.weights:
        if weight.path.split("/")[-1].startswith("centers"):
            return keras.ops.convert_to_numpy(weight)
    return None


def plot_features(path: Path, panels: list[dict[str, Any]]) -> None:
    """Side-by-side scatter plots of 2-D features coloured by class, digits at class means.

    Each panel is a dict with ``name``, ``features`` (N, 2), ``labels`` (N,),
    ``accuracy`` and optionally ``centers`` (10, 2), drawn as black crosses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt
    import numpy as np

    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 6.2))
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels, strict=True):
        features, labels = panel["features"], panel["labels"]
        for c in range(NUM_CLASSES):
            points = features[labels == c]
            ax.scatter(
                points[:, 0], points[:, 1], s=11, color=colors[c], alpha=0.75,
                linewidths=0, label=str(c),
            )  # fmt: skip
        centers = panel.get("centers")
        if centers is not None:
            ax.scatter(
                centers[:, 0], centers[:, 1], marker="X", s=70, color="black",
                edgecolors="white", linewidths=0.8, label="learned centre", zorder=5,
            )  # fmt: skip
        for c in range(NUM_CLASSES):
            points = features[labels == c]
            if len(points):
                mx, my = points.mean(axis=0)
                ax.annotate(
                    str(c), (mx, my), xytext=(13, 13), textcoords="offset points",
                    fontsize=15, fontweight="bold", ha="center", va="center",
                    color=colors[c], zorder=6,
                    path_effects=[effects.withStroke(linewidth=3.5, foreground="white")],
                )  # fmt: skip
        ax.set_aspect("equal", adjustable="datalim")
        spread = class_spread(features, labels)
        ax.set_title(
            f"{panel['name']}\ntest accuracy {panel['accuracy']:.3f}    class spread {spread:.2f}",
            fontsize=12,
        )
        ax.set_xlabel("feature 1")
        ax.set_ylabel("feature 2")
        ax.grid(alpha=0.25)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()), list(handles.keys()), loc="center right", title="digit",
        markerscale=1.5, frameon=False,
    )  # fmt: skip
    fig.suptitle(
        "2-D features of the digits test set, one colour per digit\n"
        "class spread = mean distance to the class mean / mean distance between class means "
        "(lower is tighter)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(
    path: Path, histories: dict[str, dict[str, list[float]]], order: dict[str, list[str]]
) -> None:
    """One panel per model: every loss term per epoch, training solid, held-out dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(histories), figsize=(6.2 * len(histories), 5.0))
    for ax, (name, history) in zip(np.atleast_1d(axes), histories.items(), strict=True):
        terms = [c for c in term_columns(history, order.get(name, [])) if c != "accuracy"]
        epochs = np.arange(1, len(history["loss"]) + 1)
        values = [v for t in terms for key in (t, f"val_{t}") for v in history.get(key, [])]
        positive = bool(values) and min(values) > 0
        for i, term in enumerate(terms):
            if term == "loss":
                style = {"color": "black", "lw": 3.2, "alpha": 0.35, "zorder": 1}
            else:
                style = {"color": colors[i - 1], "lw": 1.8, "zorder": 2}
            ax.plot(epochs, history[term], marker="o", ms=3, label=term, **style)
            if f"val_{term}" in history:
                ax.plot(epochs, history[f"val_{term}"], ls="--", label=f"val_{term}", **style)
        if positive:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=12)
        ax.set_xlabel("epoch")
        ax.set_ylabel("weighted term" + (" (log scale)" if positive else ""))
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3, which="both")
        ax.legend(
            fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False
        )
    fig.suptitle(
        "Loss terms per epoch as History logs them: each term is its weighted contribution, "
        "they add up to loss\n(solid: training batches, dashed: test set)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command
def run_demo(args: argparse.Namespace) -> int:
    """The ``lossplug demo`` command (``--out``, ``--epochs``, ``--smoke``)."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 130))
    check_requirements()
    epochs = max(1, int(args.epochs))
    if args.smoke:
        epochs = min(epochs, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    with console.status("importing TensorFlow and loading the digits..."):
        import keras

        data = load_data(args.smoke)
    x_train, _, x_test, y_test = data
    console.print(
        f"[bold]lossplug demo[/bold]: scikit-learn digits, {len(x_train)} training and "
        f"{len(x_test)} test images, {epochs} epochs, a 2-D feature layer"
    )
    models = {BASELINE: build_model("cross_entropy"), CENTER: build_model("center_loss")}
    compile_models(models[BASELINE], models[CENTER])
    console.print(
        f"  {BASELINE}: loss='sparse_categorical_crossentropy'\n"
        f"  {CENTER}: loss=[use('label_smoothing', epsilon={EPSILON}), "
        f"use('center', weight={CENTER_WEIGHT}, num_classes={NUM_CLASSES})]",
        markup=False,
    )
    histories = train(models, data, epochs, batch_size=32, console=console)

    for name, history in histories.items():
        console.print(epoch_table(f"{name}: History per epoch", history, TERMS[name]))

    from rich.table import Table

    summary = Table(title="test set", title_justify="left", title_style="bold")
    for column in ("model", "test accuracy", "test loss", "class spread (lower = tighter)"):
        summary.add_column(column, justify="left" if column == "model" else "right")
    panels = []
    for name, model in models.items():
        result = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
        extractor = keras.Model(model.input, model.get_layer("features").output)
        features = extractor.predict(x_test, verbose=0, batch_size=256)
        panels.append(
            {
                "name": name,
                "features": features,
                "labels": y_test,
                "accuracy": float(result["accuracy"]),
                "centers": learned_centers(model),
            }
        )
        summary.add_row(
            name,
            f"{float(result['accuracy']):.3f}",
            f"{float(result['loss']):.4f}",
            f"{class_spread(features, y_test):.3f}",
        )
    console.print(summary)
    for panel in panels:
        console.print(f"test accuracy ({panel['name']}): {panel['accuracy']:.4f}", markup=False)

    features_png = out / "features.png"
    losses_png = out / "losses.png"
    plot_features(features_png, panels)
    plot_losses(losses_png, histories, TERMS)
    console.print(f"wrote {features_png}  (the 2-D features of both models)", markup=False)
    console.print(f"wrote {losses_png}  (the loss terms per epoch)", markup=False)
    console.print(f"done in {time.perf_counter() - started:.1f} s", markup=False)
    return 0


__all__ = ["DemoError", "check_requirements", "class_spread", "run_demo", "term_columns"]
