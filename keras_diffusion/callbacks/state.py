"""Callbacks whose Python state a backup must hold, and how a backup finds them.

A Keras backup (``keras.callbacks.BackupAndRestore``, ``tf.train.Checkpoint``) saves variables
only. A callback that decides something from the history of the run (a continuation stage
ended by a plateau, Mobahi 2016, Algorithm 1 line 4) keeps that history in Python. A
:class:`StatefulCallback` exposes it as JSON through :meth:`~StatefulCallback.get_state` and
:meth:`~StatefulCallback.set_state`; ``keras_diffusion.callbacks.BackupAndRestore`` saves and
restores the state of every stateful callback of the same ``fit`` call, without the user
wiring them together.

A callback sees neither the other callbacks nor the fit loop, only the model and the
``params`` dict that Keras hands to every callback of one ``fit`` call. Stateful callbacks
therefore register with the model they are set on (weakly: the registry holds no model or
callback alive), and :func:`fit_callbacks` picks those sharing the backup's ``params``, i.e.
those of the same ``fit`` call, in the order of the callbacks list.
"""

import weakref

import keras

# model -> weak references to the stateful callbacks set on it, in registration order.
_REGISTRY = weakref.WeakKeyDictionary()


class StatefulCallback(keras.callbacks.Callback):
    """A callback with Python state that ``keras_diffusion.callbacks.BackupAndRestore`` saves.

    Subclasses override :meth:`get_state` (a JSON-serializable dict, or ``None`` for "nothing
    to save") and :meth:`set_state`, which receives that dict in a restarted process at the
    beginning of the resumed ``fit`` (during ``on_train_begin``; the callback may not have
    had its own ``on_train_begin`` yet, so it must keep the restored state until it starts).

    Example:
    ```python
    class CountEpochs(StatefulCallback):
        def __init__(self):
            super().__init__()
            self.count = 0

        def on_epoch_end(self, epoch, logs=None):
            self.count += 1

        def get_state(self):
            return {"count": self.count}

        def set_state(self, state):
            self.count = state["count"]
    ```
    """

    def set_model(self, model):
        super().set_model(model)
        refs = [ref for ref in _REGISTRY.get(model, []) if ref() not in (None, self)]
        _REGISTRY[model] = refs + [weakref.ref(self)]

    def get_state(self):
        """The callback's state as a JSON-serializable dict; ``None``: nothing to save."""
        return None

    def set_state(self, state):
        """Restores a state returned by :meth:`get_state` (in a restarted process)."""
        raise NotImplementedError(
            f"{type(self).__name__}.get_state returns a state but set_state is not "
            "implemented."
        )


def fit_callbacks(model, params):
    """The stateful callbacks of the ``fit`` call whose callbacks received ``params``.

    Returns ``{key: callback}`` for those with a state, keyed ``"<index>:<class name>"`` in
    the order of the callbacks list, so that a restarted run with the same callbacks list
    matches every saved state to its callback.
    """
    callbacks = [ref() for ref in _REGISTRY.get(model, [])]
    callbacks = [c for c in callbacks if c is not None and getattr(c, "params", None) is params]
    callbacks = [c for c in callbacks if c.get_state() is not None]
    return {f"{i}:{type(c).__name__}": c for i, c in enumerate(callbacks)}
