"""Optimizers of keras_diffusion, their state/diagnostics mixin, guard and diagnostics logger."""
from keras_diffusion.optimizers import guard  # noqa: F401
from keras_diffusion.optimizers.annealed import AnnealedStep  # noqa: F401
from keras_diffusion.optimizers.closure_optimizer import ClosureOptimizer  # noqa: F401
from keras_diffusion.optimizers.diagnostics import DiagnosticsLogger  # noqa: F401
from keras_diffusion.optimizers.gauss_newton import GaussNewton  # noqa: F401
from keras_diffusion.optimizers.hessian_free import HessianFree  # noqa: F401
from keras_diffusion.optimizers.gaussian_continuation import GaussianContinuation  # noqa: F401
from keras_diffusion.optimizers.state import OptimizerStateMixin  # noqa: F401
from keras_diffusion.optimizers.local_entropy import HEAT, HJ, EntropySGD  # noqa: F401
from keras_diffusion.optimizers.saddle_free import SaddleFreeNewton  # noqa: F401
