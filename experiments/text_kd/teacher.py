"""Teacher: all-MiniLM-L6-v2 fine-tuned on stdlib_docstrings (16 classes, 32 tokens).

Command:
    distill-jax train --config experiments/text_kd/teacher.py --workdir runs/text_kd/teacher

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.base_config()
