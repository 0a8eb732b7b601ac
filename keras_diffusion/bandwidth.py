"""The smoothing bandwidth sigma shared by the diffused layers of a model.

Diffusion (Mobahi 2016, sec. 2, eq. (5)) convolves the training cost with a Gaussian of
standard deviation ``sigma``; continuation (Algorithm 1) follows the minimizer while
``sigma`` shrinks to zero. Every diffused layer of a model must see the *same* sigma, so
sigma lives in one small object, :class:`Bandwidth`, that the layers hold by reference:

>>> sigma = Bandwidth(1.0)
>>> layer_a = keras_diffusion.layers.DiffusedActivation("erf", bandwidth=sigma)
>>> layer_b = keras_diffusion.layers.DiffusedActivation("tanh", bandwidth=sigma)

Its value is a Keras variable: callbacks assign it during ``fit`` without retracing the
train step, and ``model.save`` stores it once.

Serialization. A layer's ``get_config`` holds its bandwidth as :func:`serialize` makes it:
the JSON config of ``keras.saving.serialize_keras_object(bandwidth)`` plus Keras's
``"shared_object_id"``, the same for every layer holding that bandwidth. Loading gives the
layers of one config one shared object again:

* ``.keras`` files (``model.save`` / ``keras.models.load_model``): Keras's shared-object
  scope matches the ids (the id is ``id(bandwidth)``, as Keras writes it);
* ``model.to_json()`` / ``keras.models.model_from_json`` and ``from_config`` (no Keras scope):
  the id is the bandwidth's :attr:`Bandwidth.sharing_key`, a random token that a bandwidth
  restored from a config keeps, and :func:`resolve` gives every layer that names the same
  id the same restored bandwidth. A layer name that claims an id a second time starts a new
  restoration (loading one config twice gives two independent models). Hence one limit:
  two layers of *equal names* (possible only in different nested models) that share a
  bandwidth come back from these routes with one bandwidth each; ``.keras`` files keep it.
"""

import uuid
import weakref

import keras
import numpy as np
from keras import ops

from keras_diffusion import compat, validation


def check_nonnegative(name, value, meaning=""):
    """Returns ``value`` as a float after checking that it is a finite number >= 0.

    ``keras_diffusion.validation.nonnegative`` (a 0-d numpy array counts as its number) with
    ``meaning`` (e.g. ``"(lambda of ...)"``) as the hint of its message.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return validation.nonnegative(name, value, hint=meaning.strip())


def check_sigma(sigma):
    """Returns ``sigma`` as a float after checking that it is finite and >= 0."""
    return check_nonnegative("sigma", sigma, "(sigma = 0 is the undiffused network)")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Bandwidth(keras.layers.Layer):
    """Holds the Gaussian smoothing bandwidth sigma shared by diffused layers.

    Args:
        sigma: initial bandwidth, a finite number >= 0.
        trainable: whether sigma is trained with the weights (default ``False``: it is
            set by a continuation schedule, see ``keras_diffusion.callbacks``).
        learned: Algorithm 2 of Gaussian continuation (Lersch et al., sec. 2.2) on the
            closed-form diffused cost: the trainable variable is ``s = log(sigma^2)`` (the log
            of the variance lambda, a change of variables keeping sigma > 0) and the model's
            optimizer moves it with the weights, by the exact gradient of the closed forms.
            Needs ``sigma > 0``. A learned bandwidth is owned by the optimizer: ``assign``
            (hence every sigma schedule callback) refuses it.
        regularization: with ``learned``, the coefficient ``c >= 0`` of the penalty
            ``c * sigma^2`` added to the loss, i.e. ``c`` is added to ``dg/dlambda``: eq. (12)
            with ``c = beta * m`` (pass ``beta * model.count_params()``).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ...).

    Attributes:
        sharing_key: the token that links the layers holding this bandwidth in configs made
            outside a ``.keras`` file (see the module docstring); a bandwidth restored from
            such a config keeps the key it was saved with.

    Example:

    >>> sigma = Bandwidth(0.5)
    >>> float(sigma.value)
    0.5
    >>> sigma.assign(0.25)
    >>> float(sigma.value)
    0.25
    """

    def __init__(self, sigma=1.0, trainable=False, learned=False, regularization=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        self.learned = bool(learned)
        trainable = trainable or self.learned
        super().__init__(trainable=trainable, **kwargs)
        self.initial_sigma = check_sigma(sigma)
        self.regularization = check_nonnegative(
            "regularization", regularization, "(beta * m of eq. (12))"
        )
        if self.learned and self.initial_sigma == 0:
            raise ValueError(
                "A learned Bandwidth stores log(sigma^2) and needs sigma > 0, got sigma=0; "
                "start from e.g. sigma=1e-3."
            )
        if self.regularization and not self.learned:
            raise ValueError(
                f"regularization={regularization!r} penalizes a learned bandwidth only; "
                "pass learned=True or regularization=0."
            )
        self.sharing_key = uuid.uuid4().hex
        # Created at construction, not in build: sigma is a scalar whatever the inputs of the
        # layers holding it, and schedules assign it before any of them is called.
        initial = 2 * np.log(self.initial_sigma) if self.learned else self.initial_sigma
        self.variable = self.add_weight(
            name="log_variance" if self.learned else "sigma",
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(float(initial)),
            regularizer=VariancePenalty(self.regularization) if self.regularization else None,
            trainable=trainable,
        )
        self.build(None)
        self.driver = None

    @property
    def value(self):
        """The current sigma as a float32 scalar tensor.

        With a :attr:`driver` (a per-step sigma schedule during ``fit``, see
        :meth:`drive`) it is ``driver(held)``, ``held`` the variable's value.
        """
        value = ops.convert_to_tensor(self.variable)
        if self.learned:
            return ops.exp(0.5 * value)
        return value if self.driver is None else self.driver(value)

    def drive(self, driver):
        """Lets ``driver(held) -> sigma`` compute :attr:`value` inside traced functions.

        A ``unit="batch"`` schedule of ``keras_diffusion.callbacks`` evaluates sigma from the
        optimizer's step counter in the graph of the train step, so that every step of an
        execution of ``steps_per_execution`` steps sees its own sigma. Functions traced
        before ``drive`` keep the value they traced. ``None`` releases the bandwidth.
        """
        if driver is not None:
            self._refuse_if_learned()
        self.driver = driver

    def assign(self, sigma):
        """Sets sigma. Python numbers are checked here; tensors are assigned as given."""
        self._refuse_if_learned()
        if isinstance(sigma, (int, float)):
            sigma = check_sigma(sigma)
        self.variable.assign(ops.cast(sigma, "float32"))

    def _refuse_if_learned(self):
        if self.learned:
            raise ValueError(
                f"Bandwidth {self.name!r} is learned (its sigma is an optimization variable "
                "moved by the optimizer): a sigma schedule or set_sigma cannot drive it. "
                "Remove the schedule callback, or create the Bandwidth with learned=False."
            )

    def call(self, inputs=None):
        return self.value

    def get_config(self):
        config = super().get_config()
        config["sigma"] = self.initial_sigma
        if self.learned:
            config.update(learned=True, regularization=self.regularization)
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VariancePenalty(keras.regularizers.Regularizer):
    """``coefficient * exp(s)`` for the log-variance ``s`` of a learned :class:`Bandwidth`.

    Its derivative in ``lambda = exp(s)`` is ``coefficient``: the ``beta * m`` that eq. (12)
    of Lersch et al. adds to ``dg/dlambda``.
    """

    def __init__(self, coefficient):
        self.coefficient = check_nonnegative("coefficient", coefficient)

    def __call__(self, log_variance):
        return self.coefficient * ops.exp(log_variance)

    def get_config(self):
        return {"coefficient": self.coefficient}


def serialize(bandwidth):
    """The JSON config of ``bandwidth`` for a layer's ``get_config`` (``None`` stays ``None``).

    ``keras.saving.serialize_keras_object(bandwidth)`` with ``"shared_object_id"`` always
    set: ``id(bandwidth)`` inside Keras's shared-object scope (``.keras`` saving), where Keras
    marks repeated objects with that id itself, and :attr:`Bandwidth.sharing_key` outside it.
    Setting it on every config, not only on repeats, keeps the link also where Keras copies a
    config after serializing it (``keras.layers.RNN`` serializes its cell in ``get_config``).
    """
    if bandwidth is None:
        return None
    config = keras.saving.serialize_keras_object(bandwidth)
    config["shared_object_id"] = (
        id(bandwidth) if compat.in_object_sharing_scope() else bandwidth.sharing_key
    )
    return config


class _Restorations:
    """Bandwidths restored outside Keras's shared-object scope, by ``shared_object_id``.

    Lifetime: an entry lives as long as its bandwidth (weak references), so the registry
    never holds more entries than there are restored bandwidths alive. Each entry records the
    names of the layers that took it; a name taking it again starts a new restoration.
    """

    def __init__(self):
        self._entries = {}

    def take(self, key, owner_name, config):
        entry = self._entries.get(key)
        bandwidth = None if entry is None else entry[0]()
        if bandwidth is not None and owner_name not in entry[1]:
            entry[1].add(owner_name)
            return bandwidth
        bandwidth = _deserialize(config)
        bandwidth.sharing_key = key
        self._entries[key] = (
            weakref.ref(bandwidth, lambda _, key=key: self._forget(key)),
            {owner_name},
        )
        return bandwidth

    def _forget(self, key):
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is None:
            del self._entries[key]


_RESTORATIONS = _Restorations()


def _deserialize(config):
    restored = keras.saving.deserialize_keras_object(config)
    if not isinstance(restored, Bandwidth):
        raise TypeError(f"bandwidth config does not describe a Bandwidth: {config!r}")
    return restored


def resolve(bandwidth, owner=None):
    """Turns a layer's ``bandwidth`` argument into a :class:`Bandwidth`.

    Accepts a ``Bandwidth`` (shared by reference), a number (a private bandwidth starting at
    that value), ``None`` (a private bandwidth starting at 1.0) or a config from
    :func:`serialize` (or ``keras.saving.serialize_keras_object``). A config restores the
    bandwidth it was made from once per loaded model: inside Keras's shared-object scope
    Keras matches its ``shared_object_id``; outside it, the layers (``owner``, whose name
    identifies it) whose configs carry the same id get the same bandwidth (module docstring).
    """
    if isinstance(bandwidth, Bandwidth):
        return bandwidth
    if bandwidth is None:
        return Bandwidth()
    if isinstance(bandwidth, dict):
        key = bandwidth.get("shared_object_id")
        if key is None or owner is None or compat.in_object_sharing_scope():
            return _deserialize(bandwidth)
        return _RESTORATIONS.take(key, owner.name, bandwidth)
    return Bandwidth(bandwidth)


def bandwidths(model):
    """The distinct :class:`Bandwidth` objects used anywhere inside ``model``."""
    found = {}
    for layer in compat.flatten_layers(model):
        if isinstance(layer, Bandwidth):
            found.setdefault(id(layer), layer)
    return list(found.values())


def require_bandwidths(model):
    """:func:`bandwidths` of ``model``; ``ValueError`` if it has none (no diffused layer)."""
    found = bandwidths(model)
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no diffused layers (no keras_diffusion.Bandwidth "
            "inside it), so there is no sigma to read or set."
        )
    return found


def get_sigma(model):
    """The sigma shared by the diffused layers of ``model``, as a Python float.

    Raises ``ValueError`` if the model has no diffused layer, or if its layers hold
    bandwidths with different values (call :func:`set_sigma` to make them agree).
    """
    values = {float(ops.convert_to_numpy(b.value)) for b in require_bandwidths(model)}
    if len(values) > 1:
        raise ValueError(
            f"Model {model.name!r} holds bandwidths with different values {sorted(values)}; "
            "pass one keras_diffusion.Bandwidth to all diffused layers, or call set_sigma()."
        )
    return values.pop()


def set_sigma(model, sigma):
    """Assigns ``sigma`` to every bandwidth inside ``model`` (no retracing)."""
    sigma = check_sigma(sigma)
    for bandwidth in require_bandwidths(model):
        bandwidth.assign(sigma)
