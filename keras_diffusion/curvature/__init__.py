"""Curvature: Jacobian/Hessian/Gauss-Newton/Fisher-vector products, spectra and solvers."""

from keras_diffusion.curvature.forward import (  # noqa: E402,F401
    ProductMode,
    float32_policy,
    jvp,
    vjp,
)
from keras_diffusion.curvature.cross_replica import ReplicaSumOperator  # noqa: E402,F401
from keras_diffusion.curvature.gauss_newton_operator import (  # noqa: E402,F401
    GaussNewtonOperator,
)
from keras_diffusion.curvature.loss_hessians import (  # noqa: E402,F401
    LossHessian,
    OutputFisher,
    from_keras_loss,
)
from keras_diffusion.curvature.products import (  # noqa: E402,F401
    empirical_fisher_vp,
    fisher_vp,
    ggn_vp,
    hvp,
)
from keras_diffusion.curvature.linear_operator import (  # noqa: E402,F401
    rademacher_like,
    random_normal_like,
)
from keras_diffusion.curvature.solvers import (  # noqa: E402,F401
    STOP_REASONS,
    CGResult,
    MinresResult,
    cg_save_schedule,
    conjugate_gradient,
    diagonal_preconditioner,
    minres,
)
from keras_diffusion.curvature.spectra import (  # noqa: E402,F401
    HutchinsonResult,
    LanczosResult,
    PowerIterationResult,
    SLQResult,
    hutchinson_trace,
    lanczos,
    power_iteration,
    smallest_eigenvalue,
    spectral_density,
    stochastic_lanczos_quadrature,
)
