"""As kd_aug, with unlabelled in-domain text (for mr: the 3,697 Amazon review snippets of
`vader_snippets`) appended to the transfer set; it has no labels, only the teacher's.

TextCNN on `mr` by default; the BiLSTM with
`--config.student.model='{"name": "bilstm"}'` (its defaults are the paper's sizes).

Command:
    distill-jax cache-teacher --config experiments/text_cls/kd_aug_unlabelled.py \
        --teacher runs/text_cls/mr/teacher --views 4 --workdir runs/text_cls/mr/cache_unlabelled
    distill-jax distill --config experiments/text_cls/kd_aug_unlabelled.py \
        --teacher_cache runs/text_cls/mr/cache_unlabelled \
        --workdir runs/text_cls/mr/textcnn/kd_aug_unlabelled

Result: experiments/text_cls/README.md (measured by `run.py`, which also chooses alpha and
T on the validation split for the distilled settings).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.config("kd_aug_unlabelled")
