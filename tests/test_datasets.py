"""keras_diffusion.datasets: the TFDS builders against their generators, real data sets stored
offline in TFDS's own format, and the input pipelines (seeded epochs, resume, sharding)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_diffusion import datasets
from keras_diffusion.datasets import adding, builders, curves, pathological, pipelines, text


def _arrays(name, split, data_dir, config=None, keys=None):
    """Every example of a split, stacked per feature (in stored order)."""
    data = datasets.load(name, split, data_dir=data_dir, config=config, as_supervised=False)
    examples = list(tfds.as_numpy(data))
    keys = keys or list(examples[0])
    return {k: [e[k] for e in examples] for k in keys}


def test_adding_builder_is_the_generator_and_registered(tmp_path):
    assert "adding_problem" in tfds.list_builders()
    mobahi = {s: _arrays("adding_problem/mobahi", s, tmp_path) for s in ("train", "test")}
    task = adding.mobahi_adding_task(seed=0)
    for split, data in mobahi.items():
        x, y = task.arrays(split)
        np.testing.assert_array_equal(np.stack(data["x"]), x)
        np.testing.assert_array_equal(np.stack(data["y"]), y)
    info = tfds.builder("adding_problem/mobahi", data_dir=tmp_path).info
    assert info.splits["train"].num_examples == 1000 and info.splits["test"].num_examples == 100
    assert info.features["x"].shape == (10, 2) and "mobahi2016training" in info.citation
    assert str(info.version) == "1.0.0"
    # The long problem: a small custom config, one marker per half.
    config = builders.custom_config(builders.AddingProblem, "long_200", num_train=30,
                                    num_test=4, seed=3)
    assert config.name == "long_200-num_test4-num_train30-seed3"
    data = _arrays("adding_problem", "train", tmp_path, config)
    x, y = adding.long_adding_task(200, seed=3, num_train=30, num_test=4).arrays("train")
    np.testing.assert_array_equal(np.stack(data["x"]), x)
    np.testing.assert_array_equal(np.stack(data["y"]), y)


def test_builds_are_deterministic_across_data_dirs(tmp_path):
    config = builders.custom_config(builders.Curves, num_train=6, num_test=3)
    first = _arrays("curves", "train", tmp_path / "a", config)
    second = _arrays("curves", "train", tmp_path / "b", config)
    np.testing.assert_array_equal(np.stack(first["image"]), np.stack(second["image"]))
    other = builders.custom_config(builders.Curves, num_train=6, num_test=3, seed=1)
    third = _arrays("curves", "train", tmp_path / "a", other)
    assert not np.array_equal(np.stack(first["image"]), np.stack(third["image"]))


@pytest.mark.parametrize("name", pathological.TASKS)
def test_pathological_builder_is_the_generator(tmp_path, name):
    task = pathological.PathologicalTask(name, 20)
    config = builders.custom_config(builders.Pathological, f"{name}_50", length=20,
                                    num_train=25, num_test=5, chunk=10)
    data = _arrays("pathological", "train", tmp_path, config)
    rng = np.random.default_rng([0, 0])  # the train stream of seed 0
    expected = [task.sample(k, rng) for k in (10, 10, 5)]
    xs = [x for chunk, _ in expected for x in chunk]
    ys = np.concatenate([y for _, y in expected])
    assert len(data["x"]) == 25
    for stored, x in zip(data["x"], xs):
        np.testing.assert_array_equal(stored, x if task.regression else np.argmax(x, axis=-1))
    np.testing.assert_array_equal(np.stack(data["y"]), ys)
    info = tfds.builder("pathological", config=config, data_dir=tmp_path).info
    assert info.splits["test"].num_examples == 5
    pairs = pipelines.pathological_pairs(
        datasets.load("pathological", "train", data_dir=tmp_path, config=config), task
    )
    x, _ = next(iter(pairs))
    assert x.shape[-1] == task.input_dim  # one-hot again


def test_char_corpus_hamlet_and_ptb(tmp_path):
    corpus = text.CharCorpus.from_text(text.load_bundled_text())
    for split, part in (("train", corpus.train), ("validation", corpus.valid),
                        ("test", corpus.test)):
        (stored,) = _arrays("char_corpus/hamlet", split, tmp_path)["text"]
        assert stored.decode() == part
    manual = tmp_path / "manual"
    manual.mkdir()
    for split, line in (("train", "a b _ c"), ("valid", "c _ a"), ("test", "b")):
        (manual / f"ptb.char.{split}.txt").write_text(line + "\n")
    builder = tfds.builder("char_corpus/ptb", data_dir=tmp_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    (element,) = tfds.as_numpy(builder.as_dataset(split="validation"))
    assert element["text"].decode() == "c_a\n"


def test_sklearn_digits_split_and_scale(tmp_path):
    from sklearn.datasets import load_digits

    train = _arrays("sklearn_digits", "train", tmp_path)
    test = _arrays("sklearn_digits", "test", tmp_path)
    assert len(train["image"]) == 1438 and len(test["image"]) == 359  # 20% of 1,797
    images = np.stack(train["image"] + test["image"])[..., 0]
    assert images.shape[1:] == (8, 8) and images.max() == 255
    digits = load_digits()
    stored = sorted(map(bytes, images.reshape(len(images), -1)))
    expected = np.round(digits.images * 255 / 16).astype(np.uint8).reshape(len(images), -1)
    assert stored == sorted(map(bytes, expected))
    assert sorted(train["label"] + test["label"]) == sorted(digits.target)


def test_mnist1d_is_its_generator_without_touching_global_random_state(tmp_path):
    state = np.random.get_state()[1].copy()
    config = builders.custom_config(builders.Mnist1d, num_samples=200)
    train = _arrays("mnist1d", "train", tmp_path, config)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    reference = builders.mnist1d_arrays(200, 42)
    np.testing.assert_allclose(np.stack(train["x"]), reference["x"], rtol=1e-6)
    np.testing.assert_array_equal(train["y"], reference["y"])
    assert np.stack(train["x"]).shape == (160, 40)


def test_curves_pass_through_their_control_points():
    control = np.array([[[3.0, 4.0], [14.0, 20.0], [24.0, 6.0]]])
    points = curves.curve_points(control, samples=5)  # t = 0, 1/4, 1/2, 3/4, 1
    np.testing.assert_allclose(points[0, [0, 2, 4]], control[0])
    rng = np.random.default_rng(0)
    images = curves.curve_images(3, rng)
    assert images.shape == (3, 28, 28) and images.min() >= 0 and images.max() <= 1
    drawn = np.random.default_rng(0).uniform(2, 25, size=(3, 3, 2))  # the same draws
    for image, points in zip(images, drawn):
        for row, col in np.round(points).astype(int):
            assert image[row, col] > 0.3  # within half a pixel of the stroke
    assert 0.01 < (images > 0.5).mean() < 0.2  # a thin stroke, not a blob


REAL = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def _store_real(name, data_dir, n=6):
    """A tiny copy of a real data set with its real features, written by TFDS under its real
    name and version."""
    rng = np.random.default_rng(0)
    features = tfds.builder(name, data_dir=data_dir).info.features  # from the code, no data
    shape = features["image"].shape

    def split(offset):
        columns = {
            "image": rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8),
            "label": rng.integers(0, 10, size=n),
        }
        if "id" in features:
            columns["id"] = [f"{name}_{offset + i}" for i in range(n)]
        return tf.data.Dataset.from_tensor_slices(columns)

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=str(tfds.builder_cls(name).VERSION), features=features,
        split_datasets={"train": split(0), "test": split(n)}, data_dir=data_dir,
    )


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dataset_pipeline_offline(tmp_path, name):
    shape = REAL[name]
    _store_real(name, tmp_path)
    data = datasets.load(name, "train", data_dir=tmp_path)
    assert isinstance(tfds.builder(name, data_dir=tmp_path), tfds.builder_cls(name))
    image, label = next(iter(data))
    assert image.shape == shape and image.dtype == tf.uint8
    raw = image.numpy().astype(np.float32) / 255
    x, y = next(iter(pipelines.image_pairs(data, size=(10, 10), flatten=True)))
    assert x.shape == (10 * 10 * shape[2],) and x.dtype == tf.float32 and int(y) == int(label)
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1
    half = (shape[0] // 2, shape[1] // 2)  # area averaging of 2 x 2 blocks, in numpy
    x, _ = next(iter(pipelines.image_pairs(data, size=half)))
    blocks = raw.reshape(half[0], 2, half[1], 2, shape[2]).mean(axis=(1, 3))
    np.testing.assert_allclose(x.numpy(), blocks, atol=1e-6)
    np.testing.assert_allclose(next(iter(pipelines.image_pairs(data)))[0].numpy(), raw)


def test_missing_real_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError) as error:
        datasets.load("cifar10", "train", data_dir=str(tmp_path))
    message = str(error.value)
    for part in ("'cifar10'", str(tmp_path), "download=True", "download_and_prepare",
                 "sklearn_digits"):
        assert part in message


def _numbers(n):
    return tf.data.Dataset.range(n).map(lambda i: (tf.cast(i, tf.float32)[None], i))


def _labels(data, steps):
    return [batch[1].numpy().tolist() for batch in data.take(steps)]


def test_training_epochs_are_seeded_permutations_and_resume_exactly():
    steps = pipelines.steps_per_epoch(10, 4)
    assert steps == 3
    run = _labels(pipelines.batches(_numbers(10), 4, training=True, seed=5), 3 * steps)
    epochs = [sum(run[e * steps:(e + 1) * steps], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(10))  # each epoch is one permutation
    assert [len(b) for b in run[:steps]] == [4, 4, 2]
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(10))
    again = _labels(pipelines.batches(_numbers(10), 4, training=True, seed=5), 3 * steps)
    assert again == run
    other = _labels(pipelines.batches(_numbers(10), 4, training=True, seed=6), steps)
    assert other != run[:steps]
    # A restart at batch 1 of epoch 1 continues the same sequence of batches.
    resumed = pipelines.batches(_numbers(10), 4, training=True, seed=5, start_epoch=1,
                                start_step=1)
    assert _labels(resumed, 2 * steps - 1) == run[steps + 1:]
    # Independent of TensorFlow's global seed.
    tf.random.set_seed(123)
    assert _labels(pipelines.batches(_numbers(10), 4, training=True, seed=5), steps) == run[:3]


def test_evaluation_batches_in_order_and_shards_split_the_examples():
    assert _labels(pipelines.batches(_numbers(5), 2), 9) == [[0, 1], [2, 3], [4]]
    shards = []
    for worker in range(2):
        context = tf.distribute.InputContext(2, worker, 4)  # 2 workers, 4 replicas
        data = pipelines.batches(_numbers(9), 8, training=True, input_context=context)
        steps = pipelines.steps_per_epoch(9, 8, context)
        batches = _labels(data, steps)
        assert max(len(b) for b in batches) == 2  # per-replica batch of 8 / 4
        shards.append(sorted(sum(batches, [])))
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


def test_distributed_pipeline_feeds_fit(mirrored_strategy):
    def batches(context):
        return pipelines.batches(_numbers(8), 4, training=True, input_context=context,
                                 drop_remainder=True)

    data = mirrored_strategy.distribute_datasets_from_function(batches)
    with mirrored_strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    history = model.fit(data, epochs=2, steps_per_epoch=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: builders.custom_config(builders.AddingProblem, size=3), "'size'"),
        (lambda: builders.custom_config(builders.AddingProblem, "short"), "'short'"),
        (lambda: pipelines.steps_per_epoch(3, 4, drop_remainder=True), "do not fill"),
        (lambda: pipelines.batches(_numbers(3), 0), "`batch_size` must be an integer >= 1"),
        (lambda: pipelines.batches(_numbers(3), 2, start_epoch=-1), "`start_epoch`"),
        (lambda: curves.curve_images(0, np.random.default_rng()), "`n`"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
