# lme4_fit.R -- time lme4 fits for mlmsim's benchmarks (called by benchmarks/peers.py).
#
# Usage:
#   Rscript --vanilla benchmarks/lme4_fit.R DATA.csv FORMULA REML REPEATS [WARMUP [DDF]]
#
#   DATA.csv  the data; a column ".rep" (0, 1, ...) separates replicate data sets
#   FORMULA   an lme4 formula, e.g. "y ~ 1 + x + (1 + x | g)"
#   REML      TRUE or FALSE
#   REPEATS   timed fits per replicate data set
#   WARMUP    untimed fits of the first replicate before timing (default 1)
#   DDF       "none" (default) or "kenward-roger": each timed fit then also computes
#             pbkrtest's adjusted covariance (vcovAdj) and every coefficient's KR df
#             (Lb_ddf), what lmerTest's summary(m, ddf = "Kenward-Roger") needs
#
# Each timed fit is lmer(formula, data = d, REML = REML) with lme4's defaults, end to
# end (model frame, Z and X, optimisation, convergence checks), timed with Sys.time()
# (microsecond resolution). Splitting the replicates happens before timing.
#
# Output on stdout, tab separated, one line per timed fit:
#   fit  <rep>  <i>  <seconds>  <minus2ll>  <singular>
# where minus2ll is deviance(m) for ML and REMLcrit(m) for REML, and one line per
# distinct message or warning lme4 gave:
#   msg  <rep>  <text>

suppressPackageStartupMessages(library(lme4))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 4) stop("usage: lme4_fit.R DATA.csv FORMULA REML REPEATS [WARMUP]")
data_file <- args[1]
form <- as.formula(args[2])
reml <- as.logical(args[3])
repeats <- as.integer(args[4])
warmup <- if (length(args) >= 5) as.integer(args[5]) else 1L
ddf <- if (length(args) >= 6) args[6] else "none"
if (ddf == "kenward-roger") suppressPackageStartupMessages(library(pbkrtest))

all_data <- read.csv(data_file, check.names = FALSE)
reps <- split(all_data, all_data[[".rep"]])

seen <- character(0)
kr_df <- function(m) {
  V <- vcovAdj(m)
  p <- ncol(V)
  vapply(seq_len(p), function(i) Lb_ddf(diag(p)[i, , drop = FALSE], vcov(m), V), 0)
}
fit_quietly <- function(d, rep) {
  withCallingHandlers({
    m <- lmer(form, data = d, REML = reml)
    if (ddf == "kenward-roger") attr(m, "kr_df") <- kr_df(m)
    m
  },
    warning = function(w) {
      note(rep, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      note(rep, conditionMessage(m))
      invokeRestart("muffleMessage")
    }
  )
}
note <- function(rep, text) {
  text <- gsub("[\t\n]+", " ", trimws(text))
  if (!(text %in% seen)) {
    seen <<- c(seen, text)
    cat("msg", rep, text, sep = "\t")
    cat("\n")
  }
}

for (i in seq_len(warmup)) invisible(fit_quietly(reps[[1]], names(reps)[1]))

for (rep in names(reps)) {
  d <- reps[[rep]]
  for (i in seq_len(repeats)) {
    t0 <- Sys.time()
    m <- fit_quietly(d, rep)
    seconds <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
    crit <- if (reml) REMLcrit(m) else deviance(m)
    cat("fit", rep, i, sprintf("%.9f", seconds), sprintf("%.10f", crit), isSingular(m),
        sep = "\t")
    cat("\n")
  }
}
