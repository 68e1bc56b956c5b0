"""Perceptor's training library: pure PyTorch, no Django, Celery or Channels (see docs/architecture.md).

    from ml import TrainConfig, train, save_model, load_predictor
    result = train(TrainConfig(epochs=5), load_image_dataset(folder), callbacks=[print])
    save_model(result, model_dir)
    load_predictor(model_dir).predict(image_bytes)   # -> [(label, probability), ...]
"""

from ml.checkpoint import CheckpointError, read_checkpoint_info
from ml.config import HYPERPARAMETERS, ConfigError, TrainConfig
from ml.data import ImageData, load_image_dataset
from ml.export import save_model
from ml.nets import ARCHITECTURES, build_model
from ml.predict import Predictor, load_predictor
from ml.train import Cancelled, ProgressEvent, TrainResult, train

__all__ = [
    "ARCHITECTURES",
    "HYPERPARAMETERS",
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "ImageData",
    "Predictor",
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "load_image_dataset",
    "load_predictor",
    "read_checkpoint_info",
    "save_model",
    "train",
]
