"""The 2-layer BERT tagger distilled from the fine-tuned teacher's tag distributions
(0.5 token CE + 0.5 T^2 KL at T = 2, over the tagged tokens). NOT YET MEASURED.

Command (after teacher.py; seeds 0, 1, 2):
    distill-jax distill --config experiments/ner_kd/bert2_distill.py \
        --teacher runs/ner_kd/teacher --workdir runs/ner_kd/bert2_distill/seed_0 \
        --config.seed=0
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    config = common.base_config()
    config["distill"] = common.distill_objective()
    return config
