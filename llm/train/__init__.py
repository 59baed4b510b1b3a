"""Training: train state, loss plug-ins, optimisers, the jitted step, checkpoints, the loop.

    from llm.train import train
    result = train(load_config("configs/default.yaml"))

See docs/training.md.
"""

from llm.train.checkpoint import Checkpointer, CheckpointMismatch, NoUsableCheckpoint
from llm.train.evaluate import evaluate, load_run
from llm.train.loop import TrainingDiverged, train
from llm.train.losses import LossFn, LossOutput, causal_lm_loss, make_loss
from llm.train.optim import make_optimizer, make_schedule
from llm.train.sample import sample
from llm.train.state import TrainState, init_state
from llm.train.step import make_train_step, train_step

__all__ = [
    "CheckpointMismatch",
    "Checkpointer",
    "LossFn",
    "LossOutput",
    "NoUsableCheckpoint",
    "TrainState",
    "TrainingDiverged",
    "causal_lm_loss",
    "evaluate",
    "init_state",
    "load_run",
    "make_loss",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "sample",
    "train",
    "train_step",
]
