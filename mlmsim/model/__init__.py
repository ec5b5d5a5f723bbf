"""What a two-level model is, shared by the generator and the engine: an lme4 formula
parsed (``formula_safe``: the formula text checked and read; ``formula``: the fixed and
random designs X, Z and the groups, one data set or a stack of them), what each design
column is made of (``layout``: a ``DesignLayout`` built from the formula's terms), the
terms of a design over its variables (``terms``) and the names of the covariance
parameters (``covparms``)."""
