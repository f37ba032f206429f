"""Teacher: all-MiniLM-L6-v2 fine-tuned on `mr` (2 epochs, lr 5e-5, batch 32, 64 tokens).

Command:
    distill-jax train --config experiments/text_cls/teacher.py --workdir runs/text_cls/mr/teacher

Result: experiments/text_cls/README.md (measured by `run.py`).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.base_config()
