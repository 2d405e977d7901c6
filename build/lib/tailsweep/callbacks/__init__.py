"""Lightning callbacks: pictures of the predictions (``PredictionPlots``)."""

from tailsweep.callbacks.plots import PredictionPlots

__all__ = ["PredictionPlots"]
