"""Perceptor's training library: pure PyTorch, no Django, Celery or Channels (see docs/architecture.md).

    from ml import TrainConfig, train, save_model, load_predictor
    result = train(TrainConfig(epochs=5), load_image_dataset(folder), callbacks=[print])
    save_model(result, model_dir)
    load_predictor(model_dir).predict(image_bytes)   # -> [(label, probability), ...]

Speech is the same chain: load_dataset(folder) gives AudioData for a perceptor-audio/1 folder,
TrainConfig.from_dict(d, modality="audio") fills speech defaults, and predict() takes audio bytes.
"""

from ml.checkpoint import CheckpointError, read_checkpoint_info
from ml.config import HYPERPARAMETERS, ConfigError, TrainConfig, config_defaults
from ml.data import AudioData, ImageData, load_audio_dataset, load_dataset, load_image_dataset
from ml.export import save_model
from ml.nets import ARCHITECTURES, DEFAULT_ARCH, architectures_for, build_audio_model, build_model
from ml.predict import Predictor, load_predictor
from ml.train import Cancelled, ProgressEvent, TrainResult, train

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "HYPERPARAMETERS",
    "AudioData",
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "ImageData",
    "Predictor",
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "architectures_for",
    "build_audio_model",
    "build_model",
    "config_defaults",
    "load_audio_dataset",
    "load_dataset",
    "load_image_dataset",
    "load_predictor",
    "read_checkpoint_info",
    "save_model",
    "train",
]
