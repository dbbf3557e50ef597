"""Lung-field segmentation: a small U-Net trained on ``lung_masks/``, stored as a run, used by the
shortcut audit (``evaluation.shortcut``) to tell lung fields from the rest of the image.

Public API: ``train_lung_model``, ``load_lung_model``, ``predict_lung_masks``, ``dice``.
segmentation-models-pytorch is needed to build the network (optional extra ``lungs``); importing this
package does not import it.
"""

from lungxray.segmentation.model import LungModel, dice, load_lung_model, predict_lung_masks
from lungxray.segmentation.train import LungTrainResult, train_lung_model

__all__ = ["LungModel", "LungTrainResult", "dice", "load_lung_model", "predict_lung_masks", "train_lung_model"]
