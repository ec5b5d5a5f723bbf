# make_exact_lrt_reference.R -- RLRsim's exact finite-sample tests of one variance
# component (exactRLRT, exactLRT; Crainiceanu and Ruppert 2004) on simulated data, for
# mlmsim's tests of mlmsim/engine/exact_null.py (so that the tests never need R).
#
# Provenance
#   Written for R 4.2.2 with lme4 1.1-31, RLRsim 3.1-8 and jsonlite 1.8.4 (the versions
#   of the run are also stored in the JSON, `versions`, from packageVersion()).
#   Run from the repository root:
#       Rscript tests/data/make_exact_lrt_reference.R
#   (about a minute and a half, nearly all of it the 2e6 simulations of each HSB-sized
#   test; the outputs are byte-identical from run to run).
#   It writes, next to itself (tests/data/):
#     * exact_lrt_dyestuff.csv  simulated, Dyestuff-sized: 6 groups (g = A..F) of 5,
#                               a covariate x ~ N(0, 1) and
#                               y = 1500 + U_g + R, U_g ~ N(0, 20^2), R ~ N(0, 50^2)
#                               (y has no x effect);
#     * exact_lrt_hsb.csv       HSB-sized: school and ses of mlmsim/datasets/hsb.csv
#                               (160 schools, 7185 students) and a simulated
#                               y = 12 + 2 ses + U_school + R, U ~ N(0, 0.3^2), R ~ N(0, 6^2);
#     * exact_lrt_reference.json  {versions, nsim, tests: one entry per test}.
#   Simulated columns are rounded to 6 decimals and every fit uses the file read back
#   from CSV, so Python reading the same file sees the numbers lme4 saw.
#
# The data seed of each file is the first of 1, 2, 3, ... for which every test on the
# file has an asymptotic boundary p-value (0.5 chi2(q) + 0.5 chi2(q + 1)) in (0.02, 0.08):
# a small true variance, so that the exact p-values are neither near 0 nor near 1 and
# their Monte Carlo error is small (SE about 2e-4 with 2e6 simulations).
#
# Tests (the alternative fitted tightly: minqa's bobyqa, rhoend = 1e-12):
#   dyestuff_rlrt   exactRLRT(y ~ 1 + (1 | g), REML)
#   dyestuff_lrt    exactLRT(y ~ 1 + (1 | g), ML; lm(y ~ 1))            q = 0
#   dyestuff_lrt_x  exactLRT(y ~ x + (1 | g), ML; lm(y ~ 1))            q = 1
#   hsb_rlrt        exactRLRT(y ~ ses + (1 | school), REML)
#   hsb_lrt         exactLRT(y ~ ses + (1 | school), ML; lm(y ~ ses))    q = 0
# each with nsim = 2e6 simulations, RLRsim's default grid (200 points, log lambda from
# -10 to 8) and its own seed argument (1, 2, ... in the order above).
#
# JSON: `versions`; `nsim`; `tests`, one entry per test with
#   id, dataset (the CSV, from the repository root), data_seed, formula, null_formula
#   (the lm of the null), reml, function_name (exactRLRT or exactLRT), nobs, p (fixed
#   effects of the alternative), ngroups (K), q (fixed effects the null also drops);
#   criterion_alt: REMLcrit(m) (REML) or deviance(m) (ML) of the tight lmer fit;
#   criterion_null: the null's criterion as RLRsim computes it (REML: (n - p)
#   log(2 pi RSS / (n - p)) + (n - p) + log det(X'X), lme4's REML criterion at theta = 0;
#   ML: -2 logLik(lm)); singular (isSingular(m)); fit_messages;
#   statistic, p_value: RLRsim's (p = mean(statistic < sample)); nsim; seed;
#   zero_share: mean(sample == 0), the point mass at 0; sample_quantiles: quantile(sample,
#   prob) (R's type 7) at the probabilities of PROBS; asymptotic_p: the boundary mixture
#   0.5 chi2(q) + 0.5 chi2(q + 1) at the statistic; messages: RLRsim's messages.

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else "tests/data"
})
source(file.path(script_dir, "reference_common.R"))  # libraries, CONTROLS, rel, capture
suppressPackageStartupMessages(library(RLRsim))

t_start <- proc.time()[["elapsed"]]
NSIM <- 2e6
PROBS <- c(0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
TIGHT <- CONTROLS$bobyqa

write_data <- function(df, name) {
  # Write df (numeric columns rounded to 6 decimals) and read it back.
  num <- vapply(df, is.numeric, logical(1))
  df[num] <- lapply(df[num], function(v) round(v, 6))
  path <- file.path(script_dir, name)
  write.csv(df, path, row.names = FALSE, quote = FALSE)
  list(data = read.csv(path, stringsAsFactors = FALSE), file = rel(path))
}

quick_fit <- function(formula, data, reml) {
  suppressMessages(lmer(formula, data, REML = reml,
                        control = lmerControl(optimizer = "bobyqa", calc.derivs = FALSE)))
}

reml_h0 <- function(m0) {
  # exactRLRT's REML criterion of the model without the random effect (its -reml.H0):
  # (n - p) log(2 pi RSS / (n - p)) + (n - p) + log det(X'X).
  X <- model.matrix(m0)
  n <- nrow(X)
  p <- ncol(X)
  R <- qr.R(qr(X))
  (n - p) * log(2 * pi * sum(resid(m0)^2) / (n - p)) + (n - p) + log(det(t(R) %*% R))
}

asymptotic_p <- function(stat, q) 0.5 * pchisq(stat, q, lower.tail = FALSE) +
  0.5 * pchisq(stat, q + 1, lower.tail = FALSE)

# The tests of one data file: id, alternative and null formulas, REML or ML.
TESTS <- list(
  dyestuff = list(
    list(id = "dyestuff_rlrt", formula = "y ~ 1 + (1 | g)", null = "y ~ 1", reml = TRUE),
    list(id = "dyestuff_lrt", formula = "y ~ 1 + (1 | g)", null = "y ~ 1", reml = FALSE),
    list(id = "dyestuff_lrt_x", formula = "y ~ x + (1 | g)", null = "y ~ 1", reml = FALSE)
  ),
  hsb = list(
    list(id = "hsb_rlrt", formula = "y ~ ses + (1 | school)", null = "y ~ ses", reml = TRUE),
    list(id = "hsb_lrt", formula = "y ~ ses + (1 | school)", null = "y ~ ses", reml = FALSE)
  )
)

statistic_of <- function(test, d, fit) {
  # The observed statistic as RLRsim computes it, from the fit `fit` of test$formula.
  m0 <- lm(as.formula(test$null), d)
  if (test$reml) max(0, reml_h0(m0) + 2 * logLik(fit, REML = TRUE)[1])
  else max(0, 2 * (logLik(fit, REML = FALSE)[1] - logLik(m0)[1]))
}

seed_search <- function(simulate, tests) {
  # The first data seed whose tests all have an asymptotic p-value in (0.02, 0.08).
  for (seed in 1:10000) {
    d <- simulate(seed)
    ok <- vapply(tests, function(t) {
      fit <- quick_fit(as.formula(t$formula), d, t$reml)
      q <- ncol(model.matrix(fit)) - ncol(model.matrix(lm(as.formula(t$null), d)))
      p <- asymptotic_p(statistic_of(t, d, fit), q)
      p > 0.02 && p < 0.08
    }, logical(1))
    if (all(ok)) return(seed)
  }
  stop("no seed found")
}

simulate_dyestuff <- function(seed) {
  set.seed(seed)
  g <- rep(LETTERS[1:6], each = 5)
  x <- rnorm(30)
  y <- 1500 + rnorm(6, 0, 20)[match(g, LETTERS)] + rnorm(30, 0, 50)
  data.frame(g = g, x = round(x, 6), y = round(y, 6), stringsAsFactors = FALSE)
}

hsb <- read.csv(file.path(script_dir, "..", "..", "mlmsim", "datasets", "hsb.csv"))
simulate_hsb <- function(seed) {
  set.seed(seed)
  school <- factor(hsb$school)
  y <- 12 + 2 * hsb$ses + rnorm(nlevels(school), 0, 0.3)[as.integer(school)] +
    rnorm(nrow(hsb), 0, 6)
  data.frame(school = hsb$school, ses = hsb$ses, y = round(y, 6))
}

run_test <- function(test, ds, data_seed, sim_seed) {
  d <- ds$data
  fit <- capture(lmer(as.formula(test$formula), d, REML = test$reml, control = TIGHT))
  m <- fit$value
  m0 <- lm(as.formula(test$null), d)
  n <- nrow(d)
  p <- ncol(getME(m, "X"))
  q <- p - ncol(model.matrix(m0))
  t0 <- proc.time()[["elapsed"]]
  res <- if (test$reml) {
    capture(exactRLRT(m, nsim = NSIM, seed = sim_seed))
  } else {
    capture(exactLRT(m, m0, nsim = NSIM, seed = sim_seed))
  }
  secs <- proc.time()[["elapsed"]] - t0
  r <- res$value
  message(sprintf("%-15s statistic %.6f  p %.6f  (%.0f s)", test$id, r$statistic,
                  r$p.value, secs))
  list(
    id = test$id,
    dataset = ds$file,
    data_seed = data_seed,
    formula = test$formula,
    null_formula = test$null,
    reml = test$reml,
    function_name = if (test$reml) "exactRLRT" else "exactLRT",
    nobs = n,
    p = p,
    ngroups = as.integer(ngrps(m)[[1]]),
    q = q,
    criterion_alt = if (test$reml) REMLcrit(m) else deviance(m),
    criterion_null = if (test$reml) reml_h0(m0) else -2 * logLik(m0)[1],
    singular = isSingular(m),
    fit_messages = I(c(fit$messages, fit$warnings)),
    statistic = unname(r$statistic),
    p_value = r$p.value,
    nsim = NSIM,
    seed = sim_seed,
    zero_share = mean(r$sample == 0),
    sample_quantiles = lapply(seq_along(PROBS), function(i) list(
      prob = PROBS[i], value = unname(quantile(r$sample, PROBS[i])))),
    asymptotic_p = asymptotic_p(unname(r$statistic), q),
    messages = I(c(res$messages, res$warnings))
  )
}

entries <- list()
sim_seed <- 0
for (name in names(TESTS)) {
  simulate <- switch(name, dyestuff = simulate_dyestuff, hsb = simulate_hsb)
  data_seed <- seed_search(simulate, TESTS[[name]])
  ds <- write_data(simulate(data_seed), paste0("exact_lrt_", name, ".csv"))
  for (test in TESTS[[name]]) {
    sim_seed <- sim_seed + 1
    entries[[length(entries) + 1]] <- run_test(test, ds, data_seed, sim_seed)
  }
}

versions <- c(list(R = paste(R.version$major, R.version$minor, sep = ".")),
              lapply(setNames(nm = c("lme4", "RLRsim", "jsonlite")),
                     function(p) as.character(packageVersion(p))))
out <- file.path(script_dir, "exact_lrt_reference.json")
write_json(list(versions = versions, nsim = NSIM, tests = entries), out,
           auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %d tests to %s (%.0f s)", length(entries), rel(out),
                proc.time()[["elapsed"]] - t_start))
