"""Image classification with CMT: data, the released recipe, training on the engine, evaluation, prediction.

`train` imports the training loop when a run starts, so that evaluation and prediction come without it.
"""
from .evaluate import evaluate
from .options import EvalOptions, PredictOptions, TrainOptions
from .predict import predict
from .train import ClassificationTask, train

__all__ = ['ClassificationTask', 'EvalOptions', 'PredictOptions', 'TrainOptions', 'evaluate', 'predict', 'train']
