"""The 4-layer student distilled from logits, hidden states and attention (TinyBERT-style).

Objective: 0.5 * CE + 0.5 * KD(T = 2) + hidden_mse (embeddings, hidden2, hidden4 ->
embeddings, hidden3, hidden6, learned projections 192 -> 384) + attention_kl (attention2,
attention4 -> attention3, attention6, per head KL), all in one stage.

Command (after teacher.py; seeds 0, 1, 2):
    distill-jax distill --config experiments/text_kd/distill4_hidden_attention.py \
        --teacher runs/text_kd/teacher --workdir runs/text_kd/distill4_hidden_attention/seed_0 \
        --config.seed=0

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    config = common.base_config(4)
    config["distill"] = common.distill_objective(4, hidden_attention=True)
    return config
