"""Input pipelines: ``tfds`` loading with a clear offline error, preprocessing, batching.

* :func:`load` -- ``tfds.load(name, split=..., data_dir=..., as_supervised=True)``. The
  package's own data sets (``builders.py``) are generated locally on first use; a real data
  set (``mnist``, ``fashion_mnist``, ``cifar10``, ...) must be in ``data_dir`` already or be
  downloadable, otherwise :class:`DatasetNotFoundError` says how to get it and which offline
  data set of this package stands in for it.
* :func:`char_corpus` -- the ``char_corpus`` text as a ``text.CharCorpus``.
* :func:`image_pairs` -- images to float32 in ``[0, 1]``, optionally downscaled (the 10 x 10
  MNIST of Pascanu's thesis: ``size=(10, 10)``, area averaging) and flattened.
* :func:`pathological_pairs` -- the stored symbol ids of ``pathological`` one-hot encoded.
* :func:`batches` -- ``shard`` (``tf.distribute.InputContext``), ``cache``, shuffle,
  ``batch``, ``prefetch``. A training pipeline repeats forever, one epoch after another;
  epoch ``e`` is permuted by ``stateless_uniform(seed=(seed, e))`` alone, so the order of
  an epoch is the same in every run and after a restart at ``start_epoch=e``
  (``start_step`` skips the batches of a partly trained epoch). Fit it with ``steps_per_epoch`` of
  :func:`steps_per_epoch`.

Example:

>>> train = load("adding_problem/mobahi", "train", data_dir="/tmp/tfds")
>>> data = batches(train, batch_size=50, training=True, seed=0)
>>> model.fit(data, epochs=10, steps_per_epoch=steps_per_epoch(1000, 50))
"""

import math

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_diffusion import validation
from keras_diffusion.datasets import builders, text

# Offline data sets of this package that stand in for real ones missing from data_dir.
STAND_INS = {
    "mnist": "sklearn_digits (8 x 8 digits) or curves (28 x 28 images)",
    "fashion_mnist": "sklearn_digits (8 x 8 images, 10 classes) or mnist1d",
    "cifar10": "sklearn_digits (small images, 10 classes)",
}
OWN = tuple(builder.name for builder in builders.BUILDERS)  # generated here, never downloaded


class DatasetNotFoundError(FileNotFoundError):
    """A real TFDS data set that is neither in ``data_dir`` nor downloadable."""


def _missing(name, data_dir, cause):
    base = name.split("/")[0]
    stand_in = STAND_INS.get(base, "sklearn_digits, mnist1d or curves")
    where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
    return DatasetNotFoundError(
        f"TFDS data set {name!r} is not prepared in {where} ({type(cause).__name__}: "
        f"{str(cause)[:200]}). With network, load it with download=True (train.py: "
        f"--download); or prepare it on a machine with network, "
        f"`tfds.builder({base!r}, data_dir=DIR).download_and_prepare()` (or "
        f"`tfds build {base} --data_dir=DIR`), and copy DIR/{base} into {where}. Offline "
        f"stand-in from this package: {stand_in}."
    )


def load(name, split, data_dir=None, download=False, config=None, as_supervised=True,
         manual_dir=None):
    """``tfds.load`` of one split, generated locally for the package's own data sets.

    Args:
        name: a TFDS name, ``"name"`` or ``"name/config"`` (``"mnist"``,
            ``"adding_problem/mobahi"``).
        split: a TFDS split string (``"train"``, ``"train[:80%]"``, ``"test"``).
        data_dir: TFDS data directory (default TFDS's).
        download: download a real data set that is missing from ``data_dir`` (off by
            default: without network TFDS retries each file for minutes).
        config: a ``tfds.core.BuilderConfig`` (``builders.custom_config``) for ``name``.
        as_supervised: ``(input, target)`` pairs where the data set defines them.
        manual_dir: directory of manually downloaded files (``char_corpus/ptb``).

    Raises:
        DatasetNotFoundError: a real data set is missing and cannot be downloaded (or
            ``download=False``).
    """
    base = name.split("/")[0]
    kwargs = {"config": config} if config is not None else {}
    builder = tfds.builder(name, data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        if base not in OWN and not download:
            raise _missing(name, data_dir, RuntimeError("download=False"))
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
            )
        except Exception as error:  # network, DNS, checksum: all mean "not available here"
            if base in OWN:
                raise
            raise _missing(name, data_dir, error) from error
    supervised = as_supervised and builder.info.supervised_keys is not None
    return builder.as_dataset(split=split, as_supervised=supervised, shuffle_files=False)


def char_corpus(config="hamlet", data_dir=None, manual_dir=None):
    """The ``char_corpus`` data set as a ``text.CharCorpus`` (``valid`` = ``validation``).

    ``config``: ``"hamlet"`` (bundled) or ``"ptb"`` (``manual_dir`` holding
    ``ptb.char.{train,valid,test}.txt``).
    """
    validation.one_of("config", config, ("hamlet", "ptb"))
    parts = []
    for split in ("train", "validation", "test"):
        data = load(f"char_corpus/{config}", split, data_dir=data_dir, manual_dir=manual_dir)
        parts.append(data.get_single_element()["text"].numpy().decode())
    return text.CharCorpus(*parts)


def image_pairs(data, size=None, flatten=False):
    """``(image, label)`` pairs with images as float32 in ``[0, 1]`` (uint8 / 255).

    ``size``: ``(height, width)`` to downscale to by area averaging (e.g. ``(10, 10)``);
    ``flatten``: images as vectors.
    """
    def convert(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if size is not None:
            image = tf.image.resize(image, size, method="area")
        if flatten:
            image = tf.reshape(image, [-1])
        return image, label

    return data.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def autoencoder_pairs(data, flatten=True):
    """``{"image": ...}`` elements as ``(x, x)`` pairs, ``x`` float32 in ``[0, 1]`` (CURVES)."""
    images = data.map(lambda e: (e["image"], 0))
    return image_pairs(images, flatten=flatten).map(lambda x, _: (x, x))


def pathological_pairs(data, task):
    """``(x, y)`` of the ``pathological`` builder with ids one-hot encoded for ``task`` (a
    ``PathologicalTask``); regression inputs pass unchanged."""
    if task.regression:
        return data
    return data.map(lambda x, y: (tf.one_hot(x, task.input_dim), y))


def steps_per_epoch(num_examples, batch_size, input_context=None, drop_remainder=False):
    """Batches per epoch of :func:`batches` on ``num_examples`` (of one worker's shard)."""
    validation.positive_int("num_examples", num_examples)
    validation.positive_int("batch_size", batch_size)
    if input_context is not None:
        shards = input_context.num_input_pipelines
        num_examples = len(range(input_context.input_pipeline_id, num_examples, shards))
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    steps = num_examples // batch_size if drop_remainder else math.ceil(num_examples / batch_size)
    if steps == 0:
        raise ValueError(
            f"{num_examples} examples do not fill one batch of {batch_size} with "
            "drop_remainder=True; lower batch_size."
        )
    return steps


def _static(data):
    return all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(data.element_spec))


def _epochs(data, batch_size, seed, start_epoch, drop_remainder):
    """Epochs ``start_epoch, start_epoch + 1, ...`` of ``data`` (held in memory), each in the
    order ``argsort(stateless_uniform(seed=(seed, epoch)))``: independent of any global seed
    and of how many epochs ran before."""
    size = int(data.cardinality())
    if size < 1:
        raise ValueError(f"`data` must be finite with a known size, got cardinality {size}.")
    elements = data.batch(size).get_single_element()

    def epoch(index):
        pair = tf.stack([tf.constant(seed, tf.int64), index])
        keys = tf.random.stateless_uniform([size], seed=pair)
        order = tf.data.Dataset.from_tensor_slices(tf.argsort(keys))
        return order.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda rows: tf.nest.map_structure(lambda t: tf.gather(t, rows), elements)
        )

    return tf.data.Dataset.range(start_epoch, tf.int64.max).flat_map(epoch)


def _batch(data, batch_size, drop_remainder, same_length):
    if not same_length:
        return data.batch(batch_size, drop_remainder=drop_remainder)
    return data.group_by_window(
        key_func=lambda x, y: tf.cast(tf.shape(x)[0], tf.int64),
        reduce_func=lambda _, window: window.batch(batch_size, drop_remainder=drop_remainder),
        window_size=batch_size,
    )


def batches(data, batch_size, training=False, seed=0, start_epoch=0, start_step=0,
            input_context=None, cache=True, drop_remainder=False,
            same_length=False):
    """Batched pipeline of ``data``: shard, cache, (shuffle, repeat), batch, prefetch.

    Args:
        data: an unbatched ``tf.data.Dataset`` (from :func:`load` and a ``*_pairs`` map).
        batch_size: the global batch size; with ``input_context`` each pipeline batches
            ``input_context.get_per_replica_batch_size(batch_size)``.
        training: shuffle and repeat forever, epoch after epoch (fit with
            ``steps_per_epoch``); otherwise one pass in order.
        seed: shuffle seed; epoch ``e`` is shuffled by ``(seed, e)`` only.
        start_epoch, start_step: resume at batch ``start_step`` of epoch ``start_epoch``
            with the order that a run from epoch 0 has there.
        input_context: a ``tf.distribute.InputContext``: this pipeline reads the shard
            ``input_pipeline_id`` of ``num_input_pipelines`` (by example).
        cache: keep the examples in memory after the first pass (a training pipeline of
            fixed-shape examples holds them in memory anyway).
        drop_remainder: drop the last partial batch of each epoch (needed when replicas
            must see the same number of batches).
        same_length: batch only inputs of equal length (``group_by_window``), for the
            variable-length ``addition``/``multiplication`` tasks. Variable-shape examples
            are shuffled by a seeded buffer reshuffled every epoch: their order repeats from
            run to run, but ``start_epoch``/``start_step`` do not apply and batches may
            cross epoch boundaries.
    """
    validation.positive_int("batch_size", batch_size)
    validation.integer("seed", seed)
    validation.integer("start_epoch", start_epoch)
    validation.integer("start_step", start_step)
    if input_context is not None:
        data = data.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if cache:
        data = data.cache()
    if training and _static(data):
        data = _epochs(data, batch_size, seed, start_epoch, drop_remainder).skip(start_step)
    elif training:  # variable shapes: a seeded shuffle buffer, reshuffled every epoch
        size = int(data.cardinality())
        data = data.shuffle(max(size, 1), seed=seed, reshuffle_each_iteration=True).repeat()
        data = _batch(data, batch_size, drop_remainder, same_length)
    else:
        data = _batch(data, batch_size, drop_remainder, same_length)
    options = tf.data.Options()
    options.deterministic = True
    return data.prefetch(tf.data.AUTOTUNE).with_options(options)
