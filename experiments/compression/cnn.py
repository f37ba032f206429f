"""The compression chain on a convolutional student: channels chosen by BatchNorm scale.

Command (7.6 minutes on the 2-core CPU box; measured table in README.md):
    distill-jax compress --config experiments/compression/cnn.py --workdir runs/compression_cnn

Teacher: CNN with BatchNorm, conv widths 32-64 and a 256-unit dense layer, trained on
images jittered by +-2 px. Student: CNN with BatchNorm, conv widths 16-32 and the head on
its flattened last stage (no dense hidden layer, so every layer that channel pruning cuts
has a BatchNorm whose scale ranks its channels), distilled at T = 4, alpha = 0.1. Both:
Adam 1e-3, cosine, 20 epochs, batch 128, on `mnist_5k`. Structured pruning keeps 1/2 and
1/4 of the channels of every conv layer, ranked by |BatchNorm scale| (network slimming).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = {"name": "mnist_5k"}
    train = {
        "epochs": 20,
        "batch_size": 128,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": "cosine",
    }
    config.teacher = {
        "model": {"name": "cnn", "widths": (32, 64), "dense": 256, "batch_norm": True},
        "train": dict(train, translate=2),
    }
    config.student = {
        "model": {"name": "cnn", "widths": (16, 32), "dense": 0, "batch_norm": True},
        "train": dict(train, translate=0),
    }
    config.distill = {"alpha": 0.1, "temperature": 4.0}
    config.eval = {"every_epochs": 2}
    config.compression = {
        "sparsities": [0.5, 0.8, 0.9, 0.95],
        "recovery": ["kd", "self", "hard"],
        "recovery_epochs": 5,
        "recovery_learning_rate": 3e-4,
        "channel_keep": [0.5, 0.25],
        "channel_criterion": "bn_scale",
        "int8": True,
        "qat_epochs": 3,
    }
    return config
