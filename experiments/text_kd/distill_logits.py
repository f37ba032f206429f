"""The 2-layer student distilled from the fine-tuned teacher's logits only.

Objective: 0.5 * CE + 0.5 * T^2 KL(teacher || student) at T = 2.

Command (after teacher.py; seeds 0, 1, 2):
    distill-jax distill --config experiments/text_kd/distill_logits.py \
        --teacher runs/text_kd/teacher --workdir runs/text_kd/distill_logits/seed_0 \
        --config.seed=0

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
    config = common.base_config()
    config["distill"] = {"alpha": 0.5, "temperature": 2.0, "losses": {"kd": dict(common.KD)}}
    return config
