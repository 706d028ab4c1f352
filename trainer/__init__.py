"""Training recipes of He et al. 2016 and the loop (one process, or many under torchrun).

`train(TrainConfig(...)) -> TrainResult` is what `resnet-deploy train` calls; the trainer never imports
the CLI. `python -m trainer plot RUN... -o fig.png` draws Fig. 6-style error curves of one or more runs.
"""

from trainer.config import TrainConfig
from trainer.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
