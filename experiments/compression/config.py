"""Compressing the distilled MNIST student further: prune, then quantize, with KD recovery.

Command (6.5 minutes on the 2-core CPU box; measured table in README.md):
    distill-jax compress --config experiments/compression/config.py \
        --workdir runs/compression

The teacher, student and distillation settings are those of experiments/mnist_kd (2x1200
teacher with dropout and +-2 px jitter; 2x800 student distilled at T = 4, alpha = 0.1; 60
epochs of Adam). The distilled student is then pruned (unstructured, to 50-98 % of its
weights, gradually over the first half of a 10-epoch recovery; structured, to 1/2, 1/4
and 1/8 of its hidden units), each recovered by fine-tuning with the teacher's soft
targets, with the unpruned distilled student's soft targets, or with hard labels only,
and quantized to int8 (post-training, and quantization-aware training with KD for 5
epochs).
"""

from distill_jax.config import import_file


def get_config():
    config = import_file("../mnist_kd/config.py", beside=__file__).get_config()
    config.run = {"seeds": 1, "scratch_aug": False}
    config.compression = {
        "sparsities": [0.5, 0.8, 0.9, 0.95, 0.98],
        "scope": "global",
        "schedule": "gradual",
        "ramp_fraction": 0.5,
        "prune_every": 10,
        "recovery": ["kd", "self", "hard"],
        "recovery_epochs": 10,
        "recovery_learning_rate": 3e-4,
        "channel_keep": [0.5, 0.25, 0.125],
        "channel_criterion": "l1",
        "int8": True,
        "qat_epochs": 5,
    }
    return config
