"""The CIFAR-100 benchmark's smoke variant: same code path, tiny data, a few steps.

Command (runs in about a minute per method on a CPU; the test suite runs a subset):
    distill-jax sweep --config experiments/cifar100/smoke.py --workdir runs/cifar100_smoke

It keeps the benchmark's models, methods and weights, and swaps in scikit-learn's `digits`
(8x8 grayscale, 10 classes; the CIFAR ResNets accept any input size) with one epoch, the
smallest pair of the zoo and CRD with 64 negatives instead of 16,384. Its accuracies mean
nothing; it exists to show that every method of the benchmark trains end to end.
"""

from distill_jax.config import import_file


def _benchmark():
    return import_file("config.py", beside=__file__)


def get_config():
    bench = _benchmark()
    config = bench.get_config()
    config.data = {"name": "digits", "validation_split": "validation", "eval_batch_size": 200}
    for role in ("teacher", "student"):
        config[role].train.epochs = 1
        config[role].train.batch_size = 64
        config[role].train.step_epochs = []
        config[role].train.translate = 1
    methods = dict(bench.METHODS)
    for label in ("crd", "crd_kd"):
        losses = dict(methods[label]["losses"])
        losses["crd"] = dict(losses["crd"], nce_k=64)
        methods[label] = dict(methods[label], losses=losses)
    config.sweep = {
        "pairs": ["resnet14:resnet8"],
        "methods": methods,
        "seeds": 1,
        "published": None,
    }
    config.checkpoint = {"every_steps": 1000, "keep": 1}
    config.eval = {"every_epochs": 1, "latency_batch_size": 8}
    config.log = {"every_steps": 5, "progress": False}
    return config
