"""The 2-layer student distilled from the fine-tuned teacher's logits only.

Objective: 0.5 * CE + 0.5 * T^2 KL(teacher || student) at T = 2.

Command (after teacher.py; seeds 0, 1, 2):
    distill-jax distill --config experiments/text_kd/distill_logits.py \
        --teacher runs/text_kd/teacher --workdir runs/text_kd/distill_logits/seed_0 \
        --config.seed=0

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    config = common.base_config()
    config["distill"] = common.distill_objective(2)
    return config
