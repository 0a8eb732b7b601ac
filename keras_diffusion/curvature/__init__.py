"""Curvature: Jacobian/Hessian/Gauss-Newton/Fisher-vector products, spectra and solvers."""
