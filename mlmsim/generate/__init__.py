"""Data generation: a two-level model's truth and the data sets drawn from it.

A :class:`~mlmsim.generate.spec.ModelSpec` (``spec``) is built from its parts, a module
each: ``predictors`` (how each level-1 and level-2 predictor is drawn),
``distributions`` (of U_j and R_ij), ``sizes`` (group sizes and the rules that draw them)
and ``covariance`` (T from SDs and correlations, checked and factored); ``checks`` holds
the small checks they share, ``spec_files`` reads and checks YAML and JSON specs, and
``simulate`` draws data sets from a spec, one or a batch.
"""
