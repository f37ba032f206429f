"""The student trained alone on transfer-set views of the labelled sentences, each
with its sentence's hard label (fresh views every epoch): augmentation without a teacher.

TextCNN on `mr` by default; the BiLSTM with
`--config.student.model='{"name": "bilstm"}'` (its defaults are the paper's sizes).

Command:
    distill-jax train --role student --config experiments/text_cls/alone_aug.py \
        --workdir runs/text_cls/mr/textcnn/alone_aug

Result: experiments/text_cls/README.md (measured by `run.py`, which also chooses alpha and
T on the validation split for the distilled settings).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.config("alone_aug")
