"""The 2-layer student trained alone on the labels (the baseline distillation must beat).

Command (seeds 0, 1, 2):
    distill-jax train --role student --config experiments/text_kd/student_alone.py \
        --workdir runs/text_kd/student_alone/seed_0 --config.seed=0

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "text_kd_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    return common.base_config()
