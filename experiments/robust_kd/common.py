"""Settings of the robust-distillation experiment on mnist_5k (imported by `run.py`).

Threat model: L-inf, eps = 0.3 on pixels in [0, 1] (Madry et al.'s MNIST setting).
Teachers: a small CNN trained normally (`standard`) and with PGD adversarial training
(`pgd`). Students: a smaller CNN trained

* `alone`: on clean images;
* `pgd_at`: alone with PGD adversarial training;
* `kd_robust`: plain KD (Hinton, alpha 0.1, T 4) from the PGD-trained teacher, clean inputs;
* `ard`, `rslad`, `iad`, `adaad`: robust distillation from the PGD-trained teacher
  (robust.py; each method at its paper's defaults).

Each model is evaluated on the test split clean and under FGSM, PGD-20, APGD-CE and
APGD-DLR at eps 0.3. `config(row)` builds any row's config.

Measured on 2 CPU cores with these settings: the default rows took 47.8 minutes
(README.md, with the table)."""

import copy

EPS = 0.3
STEPS = 10  # inner maximisation steps while training (step 2.5 * eps / steps = 0.075)
SEEDS = 3
EPOCHS = {"teacher": 20, "student": 20}
EPS_WARMUP = 0.3
"""Training eps rises linearly from 0 to EPS over the first 30 % of the steps: at eps 0.3
from the first step, a 10-epoch PGD teacher stalled near chance (validation accuracy 63 %,
training adversarial accuracy 23 % after 8 epochs, loss ~ log 10) in the first attempt."""

DATA = {"name": "mnist_5k"}
TEACHER = {"name": "cnn", "widths": [32, 64], "dense": 128}
STUDENT = {"name": "cnn", "widths": [8, 16], "dense": 32}
TRAIN = {
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "schedule": "cosine",
    "translate": 0,
}

TEACHERS = {"standard": None, "pgd": "pgd_at"}
"""Teacher label -> its robust method."""
ROWS = {
    # label: (student robust method, teacher label or None); a teacher without a method:
    # plain KD (distill.alpha, distill.temperature)
    "alone": (None, None),
    "pgd_at": ("pgd_at", None),
    "kd_robust": (None, "pgd"),
    "ard": ("ard", "pgd"),
    "rslad": ("rslad", "pgd"),
    "iad": ("iad", "pgd"),
    "adaad": ("adaad", "pgd"),
}
"""Student row -> (its robust method, the teacher it distils from or None)."""
DEFAULT_ROWS = ("alone", "pgd_at", "kd_robust", "ard", "rslad")
"""The rows of the default command (the 60-minute budget): IAD-I and AdaAD ("if time
allows", said the issue) cost about as much as ARD and RSLAD each, measured at 9-10 min a
row; `--rows alone pgd_at kd_robust ard rslad iad adaad` runs them too."""
LABELS = {
    "alone": "student alone",
    "pgd_at": "student, PGD-AT (Madry et al. 2018)",
    "kd_robust": "KD from the PGD teacher (Hinton et al. 2015)",
    "ard": "ARD (Goldblum et al. 2020)",
    "rslad": "RSLAD (Zi et al. 2021)",
    "iad": "IAD-I (Zhu et al. 2022)",
    "adaad": "AdaAD (Huang et al. 2023)",
}
ATTACKS = [
    {"name": "fgsm", "eps": EPS},
    {"name": "pgd", "eps": EPS, "steps": 20},
    {"name": "apgd_ce", "eps": EPS, "steps": 100},
    {"name": "apgd_dlr", "eps": EPS, "steps": 100},
]
"""The evaluation: clean accuracy plus robust accuracy under each (test split)."""


def robust_section(method):
    return {"method": method, "eps": EPS, "steps": STEPS, "eps_warmup": EPS_WARMUP}


def config(role: str, method=None) -> dict:
    """The config of a teacher (`role="teacher"`) or a student row, as a plain dict."""
    train = copy.deepcopy(TRAIN)
    return {
        "seed": 0,
        "data": dict(DATA),
        "teacher": {
            "model": copy.deepcopy(TEACHER),
            "train": {
                **train,
                "epochs": EPOCHS["teacher"],
                "robust": robust_section(method if role == "teacher" else None),
            },
        },
        "student": {
            "model": copy.deepcopy(STUDENT),
            "train": {
                **train,
                "epochs": EPOCHS["student"],
                "robust": robust_section(method if role == "student" else None),
            },
        },
        "distill": {"alpha": 0.1, "temperature": 4.0},
        "eval": {"every_epochs": 2},
        "log": {"progress": False},
    }
