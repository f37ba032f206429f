"""The BiLSTM tagger trained alone on the tags (NOT YET MEASURED).

Command (seeds 0, 1, 2):
    distill-jax train --role student --config experiments/ner_kd/bilstm_alone.py \
        --workdir runs/ner_kd/bilstm_alone/seed_0 --config.seed=0
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.base_config("bilstm")
