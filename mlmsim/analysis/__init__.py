"""Analysis of one fitted model: centering and its parameter maps (``centering``), and
the model plots (``modelplots``: caterpillar, group lines, within-between slopes)."""
