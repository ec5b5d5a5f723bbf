"""The data-generating model and its draws: :mod:`~mlmsim.generate.spec` (``ModelSpec``:
gamma, T, sigma^2, predictors, group sizes, distributions, spec files) and
:mod:`~mlmsim.generate.simulate` (data sets drawn from a spec, one or a batch)."""
