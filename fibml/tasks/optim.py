"""What every fibml task does with its optimizer and scheduler partials (Hydra `_partial_: true`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["optimizer_config"]


def optimizer_config(optimizer: Callable, scheduler: Callable | None, monitor: str, params: Iterable):
    """Lightning's configure_optimizers answer: the optimizer partial completed with `params`, and
    the scheduler partial (if any) completed with it, stepped per epoch on the metric `monitor`."""
    optimizer = optimizer(params=params)
    if scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler(optimizer=optimizer), "monitor": monitor, "interval": "epoch"},
    }
