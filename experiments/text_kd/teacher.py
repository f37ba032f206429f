"""Teacher: all-MiniLM-L6-v2 fine-tuned on stdlib_docstrings (16 classes, 32 tokens).

Command:
    distill-jax train --config experiments/text_kd/teacher.py --workdir runs/text_kd/teacher

Result: see the table in experiments/text_kd/README.md (measured by `run.py`).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "text_kd_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    return common.base_config()
