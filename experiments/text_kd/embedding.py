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

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    config = common.base_config()
    config["student"]["model"]["embedding_dim"] = 384
    config["distill"] = {
        "alpha": 0.0,
        "temperature": 1.0,
        "losses": {"embedding": {"weight": 1.0, "loss": "cosine"}},
    }
    return config
