"""Image classification with CMT: data, the released recipe, training on the engine, evaluation, prediction."""
from .evaluate import evaluate
from .options import EvalOptions, PredictOptions, TrainOptions
from .predict import predict
from .train import ClassificationTask, train

__all__ = ['ClassificationTask', 'EvalOptions', 'PredictOptions', 'TrainOptions', 'evaluate', 'predict', 'train']
