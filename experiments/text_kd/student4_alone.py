"""The 4-layer student trained alone on the labels (the baseline distillation must beat).

Command (seeds 0, 1, 2):
    distill-jax train --role student --config experiments/text_kd/student4_alone.py \
        --workdir runs/text_kd/student4_alone/seed_0 --config.seed=0

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.base_config(4)
