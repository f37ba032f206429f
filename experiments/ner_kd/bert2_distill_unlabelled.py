"""The 2-layer BERT tagger distilled as in `bert2_distill.py`, on wnut16's training tweets plus 927
unlabelled health-news tweets (`healthtweets`) that the teacher tags: 0.5 token CE over
the gold-tagged words + 0.5 T^2 KL at T = 2 over the gold-tagged and the unlabelled words.
NOT YET MEASURED.

Command (after teacher.py; seeds 0, 1, 2):
    distill-jax distill --config experiments/ner_kd/bert2_distill_unlabelled.py \
        --teacher runs/ner_kd/teacher \
        --workdir runs/ner_kd/bert2_distill_unlabelled/seed_0 --config.seed=0
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.distill_unlabelled_config("bert2")
