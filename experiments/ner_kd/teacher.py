"""Teacher: all-MiniLM-L6-v2 with a per-token head, fine-tuned on wnut16 (NOT YET MEASURED).

Command:
    distill-jax train --config experiments/ner_kd/teacher.py --workdir runs/ner_kd/teacher
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.base_config()
