"""Label-free embedding distillation: the student reproduces the teacher's sentence embeddings.

Objective: alpha = 0 (no labels), `embedding` loss (1 - cosine) between the student's
projected mean-pooled embedding (`embedding_dim = 384`) and the teacher's. `run.py`
distils from the *pretrained* all-MiniLM-L6-v2 (the sentence-embedding model itself) and
evaluates teacher-student cosine and recall@10 of the teacher's nearest neighbours on the
test docstrings; with the CLI the teacher is a `train` run's workdir:

    distill-jax distill --config experiments/text_kd/embedding.py \
        --teacher runs/text_kd/teacher --workdir runs/text_kd/embedding/seed_0

Result: see experiments/text_kd/README.md.
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
    config["student"]["model"]["embedding_dim"] = 384
    config["distill"] = {
        "alpha": 0.0,
        "temperature": 1.0,
        "losses": {"embedding": {"weight": 1.0, "loss": "cosine"}},
    }
    return config
