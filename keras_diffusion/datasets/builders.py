"""TFDS builders of the package's offline data sets, generated locally with no download.

Importing ``keras_diffusion.datasets`` registers them with TensorFlow Datasets, so they load
like any other data set, ``tfds.load("adding_problem/mobahi", data_dir=...)``; the first load
generates the data (seeded, deterministic) into ``data_dir`` and later loads read it back.

=====================  ==========================================================  ===========
name                   what (configs)                                              splits
=====================  ==========================================================  ===========
``adding_problem``     Mobahi (2016) sec. 7 adding task (``mobahi``: T = 10) and   train, test
                       the long adding problem (``long_200``, ``long_500``)
``pathological``       Pascanu (2014) sec. 5.9 tasks, ``<task>_<T>`` for the 7     train, test
                       tasks of ``pathological.TASKS`` and T in 50, 100, 200
``char_corpus``        character text: ``hamlet`` (bundled), ``ptb`` (manual dir)  train,
                                                                                   validation,
                                                                                   test
``sklearn_digits``     scikit-learn's 8 x 8 digits (1,797 images), 80/20 split     train, test
``mnist1d``            MNIST-1D (Greydanus 2020), the ``mnist1d`` generator        train, test
``curves``             CURVES-like 28 x 28 images (Hinton & Salakhutdinov 2006)    train, test
=====================  ==========================================================  ===========

Every config is a dataclass: :func:`custom_config` derives one with other sizes, lengths or
seeds under its own name (tests build tiny ones), e.g.
``tfds.load("adding_problem", builder_kwargs={"config": custom_config(AddingProblem,
num_train=20)})``. Examples are stored in generation order (``disable_shuffling``), so a
split equals the arrays of the generator it comes from.
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from keras_diffusion import validation
from keras_diffusion.datasets import adding, curves, pathological, text

MOBAHI_CITATION = """@article{mobahi2016training,
  title={Training recurrent neural networks by diffusion},
  author={Mobahi, Hossein}, journal={arXiv preprint arXiv:1601.04114}, year={2016}}"""
PASCANU_CITATION = """@phdthesis{pascanu2014thesis,
  title={On recurrent and deep neural networks}, author={Pascanu, Razvan},
  school={Universit\\'e de Montr\\'eal}, year={2014}}"""
HOCHREITER_CITATION = """@article{hochreiter1997long,
  title={Long short-term memory}, author={Hochreiter, Sepp and Schmidhuber, J{\\"u}rgen},
  journal={Neural computation}, volume={9}, number={8}, pages={1735--1780}, year={1997}}"""
DIGITS_CITATION = """@misc{alpaydin1998digits,
  title={Optical Recognition of Handwritten Digits}, author={Alpaydin, E. and Kaynak, C.},
  howpublished={UCI Machine Learning Repository}, year={1998}}"""
MNIST1D_CITATION = """@article{greydanus2020scaling,
  title={Scaling down deep learning}, author={Greydanus, Sam},
  journal={arXiv preprint arXiv:2011.14439}, year={2020}}"""
CURVES_CITATION = """@article{hinton2006reducing,
  title={Reducing the dimensionality of data with neural networks},
  author={Hinton, Geoffrey E and Salakhutdinov, Ruslan R}, journal={Science},
  volume={313}, number={5786}, pages={504--507}, year={2006}}"""


def custom_config(builder, base=None, **fields):
    """A config of ``builder`` (a builder class) with ``fields`` changed, named after them.

    ``base`` names the config to start from (default: the builder's first config). The name
    records every changed field (``mobahi-num_train20``), so configs of different sizes or
    seeds never share a directory of ``data_dir``.
    """
    configs = {c.name: c for c in builder.BUILDER_CONFIGS}
    base = validation.one_of("base", base or builder.BUILDER_CONFIGS[0].name, tuple(configs))
    config = configs[base]
    names = [f.name for f in dataclasses.fields(config)]
    for key in fields:
        validation.one_of("config field", key, names)
    fields = {k: v for k, v in fields.items() if v != getattr(config, k)}
    if not fields:
        return config
    suffix = "-".join(f"{k}{v}" for k, v in sorted(fields.items()))
    return dataclasses.replace(config, name=f"{base}-{suffix}", **fields)


def _info(builder, features, citation, supervised_keys=None, description=None, homepage=None):
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description or builder.builder_config.description,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised_keys,
        disable_shuffling=True,
        homepage=homepage,
        citation=citation,
    )


def _arrays_examples(**arrays):
    """``(index, {name: array[index]})`` for the rows of equally long arrays."""
    length = len(next(iter(arrays.values())))
    for i in range(length):
        yield i, {name: values[i] for name, values in arrays.items()}


def _train_test_generators(builder):
    """The train and test splits of a builder, each from ``builder._generate_examples(split)``."""
    return {split: builder._generate_examples(split) for split in ("train", "test")}


def _split_size_and_rng(config, split):
    """``(number of examples, generator)`` of ``split``: one seeded stream per split."""
    size = config.num_train if split == "train" else config.num_test
    return size, np.random.default_rng([config.seed, 0 if split == "train" else 1])


@dataclasses.dataclass(eq=False)
class AddingConfig(tfds.core.BuilderConfig):
    """``adding.AddingTask(length, num_train, num_test, placement=placement, seed=seed)``."""

    length: int = 10
    num_train: int = 1000
    num_test: int = 100
    placement: str = "uniform"
    seed: int = 0


class AddingProblem(tfds.core.GeneratorBasedBuilder):
    """The adding problem (``keras_diffusion.datasets.adding``): x ``(T, 2)``, y ``(1,)``.

    ``train`` is ``AddingTask(...).arrays("train")`` (hold out a validation part with
    ``split="train[:80%]"`` / ``"train[80%:]"``), ``test`` its independent test stream.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Mobahi sec. 7 task and the long adding problem."}
    BUILDER_CONFIGS = [
        AddingConfig(name="mobahi", description="Mobahi (2016) sec. 7: T = 10, 1000/100."),
        AddingConfig(
            name="long_200", length=200, placement="halves",
            description="Long adding problem, T = 200, one marker in each half.",
        ),
        AddingConfig(
            name="long_500", length=500, placement="halves",
            description="Long adding problem, T = 500, one marker in each half.",
        ),
    ]

    def task(self):
        c = self.builder_config
        return adding.AddingTask(c.length, c.num_train, c.num_test, placement=c.placement,
                                 seed=c.seed)

    def _info(self):
        length = self.builder_config.length
        features = {
            "x": tfds.features.Tensor(shape=(length, 2), dtype=np.float32),
            "y": tfds.features.Tensor(shape=(1,), dtype=np.float32),
        }
        return _info(self, features, MOBAHI_CITATION + "\n" + HOCHREITER_CITATION, ("x", "y"),
                     homepage="https://arxiv.org/abs/1601.04114")

    def _split_generators(self, dl_manager):
        del dl_manager
        return _train_test_generators(self)

    def _generate_examples(self, split):
        x, y = self.task().arrays(split)
        return _arrays_examples(x=x, y=y)


@dataclasses.dataclass(eq=False)
class PathologicalConfig(tfds.core.BuilderConfig):
    """``pathological.PathologicalTask(task, length)``, sampled ``chunk`` sequences at a time."""

    task: str = "temporal_order"
    length: int = 50
    num_train: int = 20000
    num_test: int = 10000
    chunk: int = 20
    seed: int = 0


def pathological_sequences(task, n, chunk, rng):
    """``n`` sequences of ``task`` as ``(x, y)`` lists: ``task.sample(min(chunk, left), rng)``
    repeated (one length per chunk for addition/multiplication, as in a training batch);
    one-hot inputs are stored as their integer ids."""
    xs, ys = [], []
    while len(xs) < n:
        x, y = task.sample(min(chunk, n - len(xs)), rng)
        if not task.regression:
            x = np.argmax(x, axis=-1).astype(np.int32)
        xs += list(x)
        ys += list(y)
    return xs, ys


class Pathological(tfds.core.GeneratorBasedBuilder):
    """Pascanu's pathological tasks (``keras_diffusion.datasets.pathological``).

    Features: ``x``, float32 ``(T', 2)`` for addition/multiplication, else the int32 symbol
    ids ``(steps,)`` (one-hot them with depth ``PathologicalTask.input_dim``, see
    ``pipelines.pathological_pair``); ``y``, float32 ``(1,)`` or int32 ``(target_steps,)``.
    ``train`` draws from ``numpy.random.default_rng([seed, 0])``, ``test`` from
    ``[seed, 1]``. The thesis trains on fresh sequences at every step
    (``PathologicalTask.dataset``); these finite splits are for reproducible runs.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The seven tasks of Pascanu (2014) sec. 5.9.3."}
    BUILDER_CONFIGS = [
        PathologicalConfig(name=f"{task}_{length}", task=task, length=length,
                           description=f"{task}, T = {length} (Pascanu 2014, sec. 5.9.3).")
        for task in pathological.TASKS
        for length in (50, 100, 200)
    ]

    def task(self):
        return pathological.PathologicalTask(self.builder_config.task, self.builder_config.length)

    def _info(self):
        task = self.task()
        if task.regression:
            x = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
            y = tfds.features.Tensor(shape=(1,), dtype=np.float32)
        else:
            x = tfds.features.Tensor(shape=(None,), dtype=np.int32)
            y = tfds.features.Tensor(shape=(task.target_steps,), dtype=np.int32)
        return _info(self, {"x": x, "y": y}, PASCANU_CITATION + "\n" + HOCHREITER_CITATION,
                     ("x", "y"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return _train_test_generators(self)

    def _generate_examples(self, split):
        c = self.builder_config
        n, rng = _split_size_and_rng(c, split)
        x, y = pathological_sequences(self.task(), n, c.chunk, rng)
        return _arrays_examples(x=x, y=y)


@dataclasses.dataclass(eq=False)
class CharCorpusConfig(tfds.core.BuilderConfig):
    """``source``: ``"bundled"`` (Hamlet, split 90/5/5) or ``"ptb"`` (``ptb.char.*.txt``)."""

    source: str = "bundled"


class CharCorpus(tfds.core.GeneratorBasedBuilder):
    """Character-level text: one example ``{"text": ...}`` per split (as ``tiny_shakespeare``).

    ``hamlet`` is the bundled public-domain corpus (``data/SOURCE.md``); ``ptb`` reads the
    character-level Penn Treebank files from ``manual_dir`` (symbols joined, ``_`` between
    words, one ``"\\n"`` per line), since TFDS has no PTB builder.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Bundled Hamlet and manual character-level PTB."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "For the `ptb` config, place ptb.char.train.txt, ptb.char.valid.txt and "
        "ptb.char.test.txt (Mikolov et al. 2012) in the manual_dir "
        "(tfds.download.DownloadConfig(manual_dir=...))."
    )
    BUILDER_CONFIGS = [
        CharCorpusConfig(name="hamlet", description="Shakespeare's Hamlet, 90/5/5 contiguous."),
        CharCorpusConfig(name="ptb", source="ptb", description="Character-level Penn Treebank."),
    ]

    def _info(self):
        return _info(self, {"text": tfds.features.Text()}, PASCANU_CITATION)

    def _split_generators(self, dl_manager):
        if self.builder_config.source == "ptb":
            corpus = text.CharCorpus.from_ptb_char(os.fspath(dl_manager.manual_dir))
        else:
            corpus = text.CharCorpus.from_text(text.load_bundled_text())
        parts = {"train": corpus.train, "validation": corpus.valid, "test": corpus.test}
        return {split: self._generate_examples(part) for split, part in parts.items()}

    def _generate_examples(self, part):
        yield 0, {"text": "".join(part)}


def _train_test(x, y, test_fraction, seed):
    """Seeded permutation split: ``(train arrays, test arrays)``."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(test_fraction * len(x)))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """``sklearn.datasets.load_digits``: 1,797 8 x 8 digits (pixel values 0..16 stored as
    ``round(v * 255 / 16)``), split 80/20 by a permutation seeded with 0."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn's copy of the UCI optical digits."}

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }
        return _info(self, features, DIGITS_CITATION, ("image", "label"),
                     description="8 x 8 handwritten digits bundled with scikit-learn.",
                     homepage="https://archive.ics.uci.edu/dataset/80")

    def _split_generators(self, dl_manager):
        del dl_manager
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
        train, test = _train_test(images, digits.target.astype(np.int64), 0.2, seed=0)
        return {"train": self._generate_examples(*train), "test": self._generate_examples(*test)}

    def _generate_examples(self, images, labels):
        return _arrays_examples(image=images, label=labels)


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
    """Arguments of ``mnist1d.data.make_dataset`` (its defaults: 5000 samples, 80% train)."""

    num_samples: int = 5000
    seed: int = 42


class Mnist1d(tfds.core.GeneratorBasedBuilder):
    """MNIST-1D: 40-sample 1-D signals of 10 digit templates (``x`` float32 ``(40,)``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d.data.make_dataset with its default arguments."}
    BUILDER_CONFIGS = [Mnist1dConfig(name="default", description="mnist1d's default data set.")]

    def _info(self):
        features = {
            "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
            "y": tfds.features.ClassLabel(num_classes=10),
        }
        return _info(self, features, MNIST1D_CITATION, ("x", "y"),
                     homepage="https://github.com/greydanus/mnist1d")

    def _split_generators(self, dl_manager):
        del dl_manager
        data = mnist1d_arrays(self.builder_config.num_samples, self.builder_config.seed)
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, x, y):
        return _arrays_examples(x=x.astype(np.float32), y=y.astype(np.int64))


def mnist1d_arrays(num_samples=5000, seed=42):
    """``mnist1d.data.make_dataset`` with its default arguments but these two (no download);
    numpy's and Python's global random states are restored afterwards (it seeds them)."""
    import random

    from mnist1d import data

    args = data.get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        return data.make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


@dataclasses.dataclass(eq=False)
class CurvesConfig(tfds.core.BuilderConfig):
    """Sizes and seed of ``curves.curve_images`` (the paper's 20,000 / 10,000)."""

    num_train: int = 20000
    num_test: int = 10000
    seed: int = 0


class Curves(tfds.core.GeneratorBasedBuilder):
    """CURVES-like images (``keras_diffusion.datasets.curves``), ``image`` uint8
    ``(28, 28, 1)``; ``train`` from ``default_rng([seed, 0])``, ``test`` from ``[seed, 1]``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Parabolas through 3 random points, 28 x 28."}
    BUILDER_CONFIGS = [CurvesConfig(name="default", description="20,000 / 10,000 images.")]

    def _info(self):
        features = {"image": tfds.features.Image(shape=(28, 28, 1))}
        return _info(self, features, CURVES_CITATION)

    def _split_generators(self, dl_manager):
        del dl_manager
        return _train_test_generators(self)

    def _generate_examples(self, split):
        c = self.builder_config
        n, rng = _split_size_and_rng(c, split)
        images = np.round(255.0 * curves.curve_images(n, rng)).astype(np.uint8)[..., None]
        return _arrays_examples(image=images)


BUILDERS = (AddingProblem, Pathological, CharCorpus, SklearnDigits, Mnist1d, Curves)
