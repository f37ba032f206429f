"""How big should a text student be on `mr`? experiments/text_cls's TextCNN, over sizes.

Command (measured time in README.md):
    distill-jax capacity --config experiments/capacity/mr.py --workdir runs/capacity/mr

Teacher: experiments/text_cls's fine-tuned all-MiniLM-L6-v2 (84.8 % there), trained once.
Students: Kim's TextCNN over the teacher's WordPiece ids, its embedding width and filter
count scaled together from Kim's (128-d embeddings, 3/4/5 x 100 filters) down by 2x steps
to 16-d x 12 filters, 8 epochs, 3 seeds each, trained

* `alone`: hard labels on the labelled sentences (text_cls's `alone` row);
* `kd:teacher`: the teacher's soft targets (alpha = 0, T = 2: text_cls's validation choice)
  on text_cls's full transfer set: 4 augmented views of each sentence plus 4 of each of
  the 3,697 unlabelled Amazon snippets, labelled once by the teacher (a teacher cache:
  `capacity.cache_views`; text_cls's `kd_aug_unlabelled` row).
"""

import copy
import os

import ml_collections

from distill_jax.config import import_file

text_cls = import_file(os.path.join(os.path.dirname(__file__), "..", "text_cls", "common.py"))

# (embedding width, filters per width): Kim's TextCNN and three halvings of both.
SIZES = ((16, 12), (32, 25), (64, 50), (128, 100))
EPOCHS = 8
"""text_cls trains its TextCNN 10; at 4 epochs the smaller TextCNNs are far from trained
(16-d: 58.9 % alone after 4, 68.4 % after 10), so the curve would measure the budget, not
the size; 10 epochs took 52.5 min, over the 45 the sweep has."""


def get_config() -> ml_collections.ConfigDict:
    config = text_cls.config("alone", "textcnn", "mr")
    config["student"]["train"]["epochs"] = EPOCHS
    transfer = text_cls.config("kd_aug_unlabelled", "textcnn", "mr")
    config["distill"] = {"alpha": 0.0, "temperature": text_cls.GRID["textcnn"]["temperature"][0]}
    # One student after another, as measured (35.6 min); at Kim's size vmap was later
    # measured 15 % faster per step on 2 cores (experiments/text_cls), small sizes untested.
    config["vmap"] = {"by": "map"}
    config["capacity"] = {
        "students": {
            f"e{e}f{f}": {
                **copy.deepcopy(text_cls.STUDENTS["textcnn"]),
                "embedding_dim": e,
                "num_filters": f,
            }
            for e, f in SIZES
        },
        "teachers": {"teacher": "latest"},
        "reference": "teacher",
        "seeds": 3,
        "cache_views": text_cls.VIEWS,
        "distilled": {
            "student": {"train": {"token_augment": transfer["student"]["train"]["token_augment"]}},
            "data": {k: transfer["data"][k] for k in ("unlabelled", "unlabelled_split")},
        },
    }
    return ml_collections.ConfigDict(config)
