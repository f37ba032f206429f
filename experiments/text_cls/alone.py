"""The student trained alone on the labelled sentences (hard labels).

TextCNN on `mr` by default; the BiLSTM with
`--config.student.model='{"name": "bilstm"}'` (its defaults are the paper's sizes).

Command:
    distill-jax train --role student --config experiments/text_cls/alone.py \
        --workdir runs/text_cls/mr/textcnn/alone

Result: experiments/text_cls/README.md (measured by `run.py`, which also chooses alpha and
T on the validation split for the distilled settings).
"""

from distill_jax.config import import_file

common = import_file("common.py", beside=__file__)


def get_config():
    return common.config("alone")
