"""Training: train state, trainable/frozen split, losses, optimisers, the jitted step, the loop.

    from llm.train import train
    result = train(load_config("configs/default.yaml"))

See docs/training.md.
"""

from llm.train.evaluate import evaluate
from llm.train.loop import TrainingDiverged, train
from llm.train.losses import (
    LOSSES,
    CausalLMLoss,
    Loss,
    LossFn,
    LossOutput,
    make_loss,
    register_loss,
)
from llm.train.optim import make_optimizer, make_schedule
from llm.train.sample import sample
from llm.train.state import TrainState, init_state
from llm.train.step import make_train_step, train_step
from llm.train.trainable import Component, Trainable, model_params

__all__ = [
    "LOSSES",
    "CausalLMLoss",
    "Component",
    "Loss",
    "LossFn",
    "LossOutput",
    "TrainState",
    "Trainable",
    "TrainingDiverged",
    "evaluate",
    "init_state",
    "make_loss",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "model_params",
    "register_loss",
    "sample",
    "train",
    "train_step",
]
