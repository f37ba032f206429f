"""How big should the student be on `mnist_5k`? Hinton et al.'s MNIST recipe
(experiments/mnist_kd), over student sizes.

Command (about 30 min on 2 CPU cores; measured times in README.md):
    distill-jax capacity --config experiments/capacity/mnist.py --workdir runs/capacity/mnist

Teacher: the mnist_kd teacher (2x1200 ReLU MLP, dropout 0.5, trained on images jittered by
+-2 pixels, 60 epochs), trained once; `early` is the same teacher stopped after epoch 10
(Cho & Hariharan 2019). Students: 2-hidden-layer MLPs of width 16 to 1,200 on the
un-jittered images, each trained alone, distilled from both teachers (alpha = 0.1, T = 4,
mnist_kd's validation choice) and through a teacher assistant (Mirzadeh et al. 2020) of
width 128, the geometric middle of 16 and 1,200 rounded to a power of two; 3 seeds each.
"""

import importlib.util
import os

import ml_collections


def _mnist_kd() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(__file__), "..", "mnist_kd", "config.py")
    spec = importlib.util.spec_from_file_location("mnist_kd_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


WIDTHS = (16, 32, 64, 128, 256, 512, 800, 1200)


def get_config() -> ml_collections.ConfigDict:
    config = _mnist_kd()
    config.capacity = {
        "students": {f"w{w}": {"name": "mlp", "hidden": (w, w)} for w in WIDTHS},
        "teachers": {"teacher": "latest", "early": "epoch:10"},
        "reference": "teacher",
        "assistants": {"ta128": {"name": "mlp", "hidden": (128, 128)}},
        "seeds": 3,
    }
    config.log = {"progress": False}
    return config
