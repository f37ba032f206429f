"""The benchmark model zoo: parameter counts, the `(logits, features)` contract, BatchNorm.

Shapes and parameter counts come from `jax.eval_shape` (tracing only, no compute); a few
small models run a real forward pass on a CIFAR-sized batch.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.models import MODELS, create_model, model_fields

IMAGENET = ("resnet18", "resnet34", "resnet50")

# Published parameter counts in millions (trainable `params` only, no BatchNorm
# statistics), at 100 classes (CIFAR-100) and 1000 classes (ImageNet), asserted to 1%:
# the counts quoted for RepDistiller's CIFAR models in the distillation literature, and
# torchvision's for the ImageNet ResNets.
PUBLISHED_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "resnet18": 11.69,
    "resnet34": 21.80,
    "resnet50": 25.56,
}

# Exact counts of our implementation at the same class counts: a regression check on every
# architecture. The ImageNet ResNets equal torchvision's exactly (11,689,512, 21,797,672,
# 25,557,032); VGG-8/13 agree with a count by hand of RepDistiller's layers.
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 2_353_060,
    "mobilenetv2_half": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
}
ZOO = sorted(PARAM_COUNTS)

# Number of `stage{i}` features of each family.
NUM_STAGES = {"vgg": 4, "mobilenetv2": 4, "resnet18": 4, "resnet34": 4, "resnet50": 4}

# Documented feature shapes (batch of 2, 32x32 inputs; 224x224 for the ImageNet family).
DOCUMENTED_SHAPES = {
    "resnet8x4": {"stem": (2, 32, 32, 32), "stage1": (2, 32, 32, 64), "stage3": (2, 8, 8, 256)},
    "wrn_40_2": {"stem": (2, 32, 32, 16), "stage2": (2, 16, 16, 64), "stage3": (2, 8, 8, 128)},
    "vgg13": {"stem": (2, 32, 32, 64), "stage3": (2, 4, 4, 512), "stage4": (2, 4, 4, 512)},
    "mobilenetv2_half": {"stem": (2, 16, 16, 16), "stage4": (2, 2, 2, 160)},
    "shufflenetv1": {"stage1": (2, 16, 16, 240), "stage3": (2, 4, 4, 960)},
    "shufflenetv2": {"stage3": (2, 4, 4, 464), "pre_logits": (2, 1024)},
    "resnet50": {"stem": (2, 112, 112, 64), "stage4": (2, 7, 7, 2048), "pre_logits": (2, 2048)},
}


def default_num_classes(name: str) -> int:
    return 1000 if name in IMAGENET else 100


def expected_feature_names(name: str) -> set[str]:
    stages = next((n for k, n in NUM_STAGES.items() if name.startswith(k)), 3)
    names = {"stem", "pre_logits"}
    for i in range(1, stages + 1):
        names |= {f"stage{i}", f"stage{i}_preact"}
    return names


@functools.cache
def abstract_init(name: str, size: int | None = None, num_classes: int | None = None):
    """`((logits, features), variables)` of model `name` from `init`, as shapes only.

    The default input size is the model's dataset's: 224 for ImageNet models, else 32.
    """
    size = size or (224 if name in IMAGENET else 32)
    model = create_model({"name": name}, num_classes or default_num_classes(name))
    x = jnp.zeros((2, size, size, 3))
    return jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x))


def variables_like(abstract_variables, seed: int = 0):
    """Concrete variables for a real forward pass, filled with NumPy (He-normal kernels).

    `model.init` itself is traced by the shape tests; executing it would compile a
    sampler per parameter shape, which costs seconds per model on a small CPU.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_param_count_matches_published(name):
    _, variables = abstract_init(name)
    millions = count(variables["params"]) / 1e6
    assert abs(millions / PUBLISHED_M[name] - 1) <= 0.01, f"{name}: {millions:.3f}M"


@pytest.mark.parametrize("name", ZOO)
def test_param_count_regression(name):
    _, variables = abstract_init(name)
    assert count(variables["params"]) == PARAM_COUNTS[name]
    assert set(variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("name", ZOO)
def test_logits_and_documented_features(name):
    (logits, features), _ = abstract_init(name)
    assert logits.shape == (2, default_num_classes(name))
    assert set(features) == expected_feature_names(name)
    for key, feat in features.items():
        assert feat.shape[0] == 2, key
        if key.endswith("_preact"):
            assert feat.shape == features[key.removesuffix("_preact")].shape
    assert features["pre_logits"].ndim == 2
    for key, shape in DOCUMENTED_SHAPES.get(name, {}).items():
        assert features[key].shape == shape, key


@pytest.mark.parametrize("name", ZOO)
def test_registry(name):
    model = create_model({"name": name}, 10, dtype="bfloat16", axis_name="batch")
    assert isinstance(model, MODELS[name])
    assert (model.num_classes, model.dtype, model.axis_name) == (10, "bfloat16", "batch")
    fields = model_fields(name)
    assert fields and all(isinstance(f, str) for f in fields)
    assert not {"num_classes", "dtype", "axis_name", "name", "parent"} & set(fields)


def test_variant_defaults_can_be_overridden_from_config():
    assert model_fields("resnet8x4") == ["depth", "widths"]
    model = create_model({"name": "resnet8", "depth": 32, "widths": [32, 64, 128, 256]}, 100)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert count(variables["params"]) == PARAM_COUNTS["resnet32x4"]


def test_compute_dtype_keeps_float32_params():
    model = create_model({"name": "resnet8"}, 100, dtype="bfloat16")
    x = jnp.zeros((2, 32, 32, 3))
    (logits, features), variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.PRNGKey(0), x)
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    assert logits.dtype == jnp.bfloat16 and features["stage3"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "name", ["resnet8", "wrn_16_1", "vgg8", "shufflenetv2", "mobilenetv2_half"]
)
def test_forward_train_and_eval(name):
    model = create_model({"name": name}, 100)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables = variables_like(abstract_init(name)[1])

    @jax.jit
    def train_and_eval(variables, x):
        train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        # Eval mode reads the running statistics and must not try to update them.
        return train_out, updates, model.apply(variables, x, train=False)

    (logits, features), updates, (logits_eval, features_eval) = train_and_eval(variables, x)
    for out, feats in ((logits, features), (logits_eval, features_eval)):
        assert out.shape == (2, 100) and bool(jnp.isfinite(out).all())
        assert set(feats) == expected_feature_names(name)
        assert all(f.shape[0] == 2 for f in feats.values())
    assert not jnp.allclose(logits, logits_eval)
    # Every BatchNorm's running statistics moved towards the batch's. (Some means stay at
    # 0: a 1x1 conv of a zero-mean BatchNorm output has zero mean; their variances move.)
    before, after = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(before) == jax.tree.structure(after)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    bn_layers = jax.tree.leaves(moved, is_leaf=lambda t: isinstance(t, dict) and "mean" in t)
    assert bn_layers and all(bn["mean"] or bn["var"] for bn in bn_layers)

    # stage{i} is the ReLU of stage{i}_preact (MobileNetV2's stages end without a ReLU).
    for i in range(1, len(features_eval) // 2):
        stage, preact = features_eval[f"stage{i}"], features_eval[f"stage{i}_preact"]
        expected = preact if name.startswith("mobilenetv2") else nn.relu(preact)
        np.testing.assert_allclose(stage, expected, rtol=1e-6, atol=1e-6)


def test_batchnorm_statistics_sync_over_axis_name():
    """Under a named axis (pmap, or vmap here) BatchNorm averages statistics over shards."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    model = create_model({"name": "resnet8"}, 100)
    sharded = create_model({"name": "resnet8"}, 100, axis_name="batch")
    variables = variables_like(abstract_init("resnet8")[1])

    @jax.jit
    def full_and_sharded(x):
        _, full = model.apply(variables, x, train=True, mutable=["batch_stats"])
        _, per_shard = jax.vmap(
            lambda xs: sharded.apply(variables, xs, train=True, mutable=["batch_stats"]),
            axis_name="batch",
        )(x.reshape(2, 2, 32, 32, 3))
        return full, per_shard

    full, per_shard = full_and_sharded(x)
    for a, b in zip(
        jax.tree.leaves(full["batch_stats"]), jax.tree.leaves(per_shard["batch_stats"]), strict=True
    ):
        np.testing.assert_allclose(b[0], a, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b[1], a, rtol=1e-4, atol=1e-5)


def test_imagenet_resnet_accepts_other_resolutions():
    model = create_model({"name": "resnet18"}, 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
    variables = variables_like(abstract_init("resnet18", 64, num_classes=10)[1])
    logits, features = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert features["stem"].shape == (2, 32, 32, 64)
    assert features["stage1"].shape == (2, 16, 16, 64)
    assert features["stage4"].shape == (2, 2, 2, 512)
    assert features["pre_logits"].shape == (2, 512)
