"""The student distilled from the teacher's soft targets on 4 transfer-set views of each
labelled sentence (Tang et al. 2019), cached once.

TextCNN on `mr` by default; the BiLSTM with
`--config.student.model='{"name": "bilstm"}'` (its defaults are the paper's sizes).

Command:
    distill-jax cache-teacher --config experiments/text_cls/kd_aug.py \
        --teacher runs/text_cls/mr/teacher --views 4 --workdir runs/text_cls/mr/cache_kd_aug
    distill-jax distill --config experiments/text_cls/kd_aug.py \
        --teacher_cache runs/text_cls/mr/cache_kd_aug --workdir runs/text_cls/mr/textcnn/kd_aug

Result: experiments/text_cls/README.md (measured by `run.py`, which also chooses alpha and
T on the validation split for the distilled settings).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.config("kd_aug")
