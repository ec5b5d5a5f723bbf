# make_inference_reference.R -- lme4/lmerTest reference fits for mlmsim's inference
# tests (Satterthwaite df, standard errors, Hessian checks) at a tightly converged
# optimum, on predictors measured in different units (so that the tests never need R).
#
# Provenance
#   Written for R 4.2.2 with lme4 1.1-31, lmerTest 3.1-3, nlme 3.1 and jsonlite 1.8.4.
#   Run from the repository root:
#       Rscript tests/data/make_inference_reference.R
#   It writes, next to itself (tests/data/):
#     * inference_sleepstudy.csv  lme4's sleepstudy (Reaction, Days, Subject);
#     * inference_bodyweight.csv  nlme's BodyWeight (weight, Time, Rat; Rat as plain labels);
#     * inference_bigx.csv        a simulated data set (g, x, xc, y; set.seed, so the
#                                 file is the same on every run of this R version);
#     * inference_reference.json  one entry per fit (fields: README.md in this folder).
#   The HSB fits read mlmsim/datasets/hsb.csv (cses = ses - meanses, size100 = size / 100,
#   as mlmsim.datasets.load("hsb") derives them).
#
# Every simulated column is rounded to 6 decimals before it is written, and every
# fit uses the data read back from the CSV file, so Python reading the same file
# sees exactly the numbers lme4 saw. Derived unit columns (Days * 24, Days * 1440,
# Time / 7) are computed after reading, the same way the tests compute them (both
# are single IEEE operations, so R and numpy give the same doubles).
#
# Each model is fitted three ways:
#   * "default": lmer()'s defaults (nloptwrap = NLopt's BOBYQA), as a user would;
#   * tight bobyqa: minqa's bobyqa with rhoend = 1e-12, maxfun = 1e5;
#   * tight nloptwrap: NLopt's BOBYQA with xtol_abs = 1e-12, ftol_abs = 1e-14,
#     xtol_rel = ftol_rel = 0, maxeval = 1e5.
# The reference ("tight") fit is the tight one with the lower criterion; fixef, se,
# Satterthwaite df, varcorr, sigma2, theta and the criterion come from it. The
# other tight fit's criterion and df are stored too (`stability`), so a test can
# see how far lmerTest's df move between two optima that agree to ~1e-9.

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else "tests/data"
})
source(file.path(script_dir, "reference_common.R"))  # libraries, rel, capture, varcorr_rows, entry_head

write_data <- function(df, name, round_cols = character(0)) {
  path <- file.path(script_dir, name)
  df[round_cols] <- lapply(df[round_cols], function(v) round(v, 6))
  write.csv(df, path, row.names = FALSE, quote = FALSE)
  back <- read.csv(path, stringsAsFactors = FALSE)
  list(data = back, file = rel(path))
}


json_array <- function(v) if (is.null(v)) NULL else I(unname(as.numeric(v)))
json_matrix <- function(M) lapply(seq_len(nrow(M)), function(i) I(unname(M[i, ])))
criterion <- function(m) if (isREML(m)) REMLcrit(m) else deviance(m)

run_lmer <- function(formula, data, reml, control = lmerControl(), start = NULL,
                     fun = quote(lme4::lmer)) {
  # lmer in an environment of its own holding everything its call refers to, so
  # that lmerTest (which re-evaluates the call with devFunOnly = TRUE) can rebuild
  # the deviance function of this very fit.
  env <- new.env(parent = globalenv())
  env$f <- as.formula(formula, env = env)
  env$data <- data
  env$reml <- reml
  env$control <- control
  env$start <- start
  call <- if (is.null(start)) {
    bquote(.(fun)(f, data = data, REML = reml, control = control))
  } else {
    bquote(.(fun)(f, data = data, REML = reml, control = control, start = start))
  }
  fit <- capture(eval(call, env))
  fit$crit <- criterion(fit$value)
  fit
}

satterthwaite <- function(m) {
  # lmerTest's Satterthwaite df (and its asymptotic covariance of (theta, sigma))
  # on this very lme4 fit.
  out <- capture(tryCatch({
    mt <- lmerTest::as_lmerModLmerTest(m)
    cf <- summary(mt)$coefficients
    list(df = setNames(cf[, "df"], rownames(cf)), t = setNames(cf[, "t value"], rownames(cf)),
         p = setNames(cf[, "Pr(>|t|)"], rownames(cf)), vcov_varpar = mt@vcov_varpar)
  }, error = function(e) list(error = conditionMessage(e))))
  c(out$value, list(messages = c(out$messages, out$warnings)))
}

theta_from_T <- function(T, sigma2) {
  # lme4's theta (lower Cholesky factor of T / sigma2, column-wise) for one block.
  L <- t(chol(T / sigma2))
  L[lower.tri(L, diag = TRUE)]
}

unit_start <- function(base, M) {
  # theta of the model with random effects b_new = M b_old, from the fit `base`
  # (random intercept and slope): T_new = M T_old M'.
  T <- unclass(VarCorr(base)[[1]])
  attr(T, "stddev") <- NULL
  attr(T, "correlation") <- NULL
  theta_from_T(M %*% T %*% t(M), sigma(base)^2)
}

fit_entry <- function(id, case, ds, formula, reml, data_note = NULL, start_from = NULL) {
  data <- ds$data

  default <- run_lmer(formula, data, reml)
  m0 <- default$value

  # Tight fits: each optimiser from lme4's start, from `start_from` (a theta carried
  # over from the same model in other units, if given), then each optimiser again
  # from the best point found so far. The lowest criterion is the reference.
  starts <- list(lme4 = NULL)
  if (!is.null(start_from)) starts$carried <- start_from(reml)
  tight <- list()
  for (s in names(starts)) for (opt in names(CONTROLS)) {
    fit <- run_lmer(formula, data, reml, CONTROLS[[opt]], starts[[s]])
    tight[[length(tight) + 1]] <- list(optimizer = opt, start = s, fit = fit)
  }
  best_of <- function(fs) fs[[which.min(vapply(fs, function(t) t$fit$crit, numeric(1)))]]
  polish_from <- getME(best_of(tight)$fit$value, "theta")
  for (opt in names(CONTROLS)) {
    fit <- run_lmer(formula, data, reml, CONTROLS[[opt]], polish_from)
    tight[[length(tight) + 1]] <- list(optimizer = opt, start = "polish", fit = fit)
  }
  best <- best_of(tight)
  other <- best_of(Filter(function(t) t$optimizer != best$optimizer, tight))
  m <- best$fit$value

  varcorr <- varcorr_rows(m)
  theta <- getME(m, "theta")

  sat <- satterthwaite(m)
  sat_other <- satterthwaite(other$fit$value)
  sat_default <- satterthwaite(m0)
  # lmerTest::lmer from the same start and control: must give the same df as
  # as_lmerModLmerTest on the lme4 fit.
  mt2 <- run_lmer(formula, data, reml, CONTROLS[[best$optimizer]],
                  if (best$start == "lme4") NULL else if (best$start == "polish") polish_from
                  else starts[[best$start]],
                  fun = quote(lmerTest::lmer))
  df_lmertest_lmer <- summary(mt2$value)$coefficients[, "df"]
  rel_diff <- function(a, b) if (is.null(a) || is.null(b)) NA else max(abs(a / b - 1))

  derivs <- m@optinfo$derivs
  c(entry_head(id, case, ds, data_note, formula, reml, m), list(
    satterthwaite_df = if (is.null(sat$df)) NULL else as.list(sat$df),
    t = if (is.null(sat$t)) NULL else as.list(sat$t),
    p = if (is.null(sat$p)) NULL else as.list(sat$p),
    varcorr = varcorr,
    sigma2 = sigma(m)^2,
    theta = json_array(theta),
    theta_names = I(names(theta)),
    minus2ll = criterion(m),
    minus2ll_default = criterion(m0),
    singular = isSingular(m),
    singular_default = isSingular(m0),
    optimizer = best$optimizer,
    start = best$start,
    # lme4's messages and warnings: the default fit (what a user sees) and the reference fit
    messages_default = I(c(default$messages, default$warnings)),
    messages = I(c(best$fit$messages, best$fit$warnings)),
    satterthwaite_messages = I(c(sat$messages, sat$error)),
    # lmerTest's asymptotic covariance of (theta, sigma): 2 H^{-1} of the criterion
    vcov_varpar = if (is.null(sat$vcov_varpar)) NULL else json_matrix(sat$vcov_varpar),
    lme4_gradient = if (is.null(derivs)) NULL else json_array(derivs$gradient),
    lme4_hessian_eigenvalues = if (is.null(derivs$Hessian)) NULL else
      json_array(eigen(derivs$Hessian, symmetric = TRUE, only.values = TRUE)$values),
    stability = list(
      tight_fits = lapply(tight, function(t) list(optimizer = t$optimizer, start = t$start,
                                                  minus2ll = t$fit$crit)),
      other_optimizer = other$optimizer,
      other_minus2ll = other$fit$crit,
      other_theta = json_array(getME(other$fit$value, "theta")),
      other_satterthwaite_df = if (is.null(sat_other$df)) NULL else as.list(sat_other$df),
      df_rel_diff_other = rel_diff(sat_other$df, sat$df),
      default_theta = json_array(getME(m0, "theta")),
      default_satterthwaite_df = if (is.null(sat_default$df)) NULL else as.list(sat_default$df),
      df_rel_diff_default = rel_diff(sat_default$df, sat$df),
      lmertest_lmer_df = as.list(df_lmertest_lmer),
      df_rel_diff_lmertest_lmer = rel_diff(df_lmertest_lmer, sat$df)
    ),
    model = m
  ))
}

fits <- list()
models <- list()
add_fits <- function(id, case, ds, formulas, remls = c(FALSE, TRUE), data_note = NULL,
                     carry = NULL) {
  # carry = list(from = id, M = matrix, terms = positions): the same model as fit
  # `from` in other units; also start the tight fits from its theta (same method)
  # mapped through b_new = M b_old, and compare (see below).
  for (formula in formulas) {
    for (reml in remls) {
      method <- if (reml) "REML" else "ML"
      message(sprintf("fitting %s/%s/%s", id, formula, method))
      start_from <- if (is.null(carry)) NULL else function(reml) {
        unit_start(models[[paste(carry$from, method, sep = "/")]], carry$M)
      }
      e <- fit_entry(id, case, ds, formula, reml, data_note, start_from)
      models[[paste(id, method, sep = "/")]] <<- e$model
      e$model <- NULL
      e$satterthwaite_df_reliable <- TRUE
      if (!is.null(carry)) {
        # The same model in other units (b_new = M b_old, X_new = X_old M^-1): the ML
        # criterion is the same, the REML one moves by -2 log|det M|; the terms in
        # carry$terms (positions) are the same contrasts, so their t and
        # Satterthwaite df are the same. lmerTest's df (a numerical Hessian in
        # (theta, sigma)) are marked unreliable where they are not.
        p <- Filter(function(f) f$id == carry$from && f$reml == reml, fits)[[1]]
        offset <- if (reml) -2 * log(abs(det(carry$M))) else 0
        k <- carry$terms
        rd <- function(a, b) max(abs(unlist(a)[k] / unlist(b)[k] - 1))
        e$invariance <- list(
          partner = carry$from,
          terms = I(names(e$fixef)[k]),
          partner_terms = I(names(p$fixef)[k]),
          criterion_offset = offset,
          criterion_diff = e$minus2ll - p$minus2ll - offset,
          t_rel_diff = rd(e$t, p$t),
          df_rel_diff = rd(e$satterthwaite_df, p$satterthwaite_df)
        )
        e$satterthwaite_df_reliable <- e$invariance$df_rel_diff < 1e-4
        message(sprintf("  against %s: criterion %+.3g, t rel. diff %.3g, df rel. diff %.3g",
                        carry$from, e$invariance$criterion_diff, e$invariance$t_rel_diff,
                        e$invariance$df_rel_diff))
      }
      message(sprintf("  reference %.12f (%s from %s), other optimiser %+.3g, default %+.3g,",
                      e$minus2ll, e$optimizer, e$start, e$stability$other_minus2ll - e$minus2ll,
                      e$minus2ll_default - e$minus2ll))
      message(sprintf("  df rel. diff: other optimiser %.3g, default fit %.3g, lmerTest::lmer %.3g",
                      e$stability$df_rel_diff_other, e$stability$df_rel_diff_default,
                      e$stability$df_rel_diff_lmertest_lmer))
      fits[[length(fits) + 1]] <<- e
    }
  }
}

# ---------------------------------------------------------------------------
# (i) lme4's sleepstudy: Days in days, hours and minutes
# ---------------------------------------------------------------------------
local({
  d <- sleepstudy[, c("Reaction", "Days", "Subject")]
  d$Subject <- as.character(d$Subject)
  ds <- write_data(d, "inference_sleepstudy.csv")
  ds$data$Hours <- ds$data$Days * 24
  ds$data$Minutes <- ds$data$Days * 1440
  add_fits("sleepstudy_days", "lme4::sleepstudy, Days in days", ds,
           "Reaction ~ Days + (Days | Subject)")
  add_fits("sleepstudy_hours", "lme4::sleepstudy, Hours = Days * 24", ds,
           "Reaction ~ Hours + (Hours | Subject)", data_note = "Hours = Days * 24",
           carry = list(from = "sleepstudy_days", M = diag(c(1, 1 / 24)), terms = 1:2))
  add_fits("sleepstudy_minutes", "lme4::sleepstudy, Minutes = Days * 1440", ds,
           "Reaction ~ Minutes + (Minutes | Subject)", data_note = "Minutes = Days * 1440",
           carry = list(from = "sleepstudy_days", M = diag(c(1, 1 / 1440)), terms = 1:2))
})

# ---------------------------------------------------------------------------
# (ii) nlme's BodyWeight: Time in days and weeks
# ---------------------------------------------------------------------------
local({
  bw <- nlme::BodyWeight
  d <- data.frame(weight = bw$weight, Time = bw$Time, Rat = as.character(bw$Rat))
  ds <- write_data(d, "inference_bodyweight.csv")
  ds$data$Weeks <- ds$data$Time / 7
  add_fits("bodyweight_weeks", "nlme::BodyWeight, Weeks = Time / 7", ds,
           "weight ~ Weeks + (Weeks | Rat)", data_note = "Weeks = Time / 7")
  add_fits("bodyweight_days", "nlme::BodyWeight, Time in days", ds,
           "weight ~ Time + (Time | Rat)",
           carry = list(from = "bodyweight_weeks", M = diag(c(1, 1 / 7)), terms = 1:2))
})

# ---------------------------------------------------------------------------
# (iii) simulated: x ~ N(1e4, 10^2), random intercept and slope, J = 50 groups of 10
# y = 1 + 0.5 x + U0 + U1 (x - 1e4) + e, (U0, U1) ~ N(0, [[4, 0.02], [0.02, 0.0025]]),
# e ~ N(0, 0.5^2); xc = x - mean(x). (In the uncentred parametrisation the intercept
# variance is ~2.5e4 times the centred one and corr(intercept, slope) ~ -0.9999; T is
# chosen so that lme4's relative slope factor theta[3] stays well above isSingular's
# 1e-4 there.)
# ---------------------------------------------------------------------------
set.seed(20240301)
local({
  J <- 50
  n <- 10
  g <- rep(seq_len(J), each = n)
  x <- rnorm(J * n, mean = 1e4, sd = 10)
  T <- matrix(c(4, 0.02, 0.02, 0.0025), 2)
  u <- matrix(rnorm(J * 2), J, 2) %*% chol(T)
  y <- 1 + 0.5 * x + u[g, 1] + u[g, 2] * (x - 1e4) + rnorm(J * n, sd = 0.5)
  x <- round(x, 6)
  xc <- x - mean(x)
  ds <- write_data(data.frame(g = g, x = x, xc = xc, y = y), "inference_bigx.csv",
                   round_cols = c("x", "xc", "y"))
  xbar <- mean(ds$data$x - ds$data$xc)
  add_fits("bigx_centred", "x ~ N(1e4, 10^2) centred: xc = x - mean(x), T = [[4, 0.02], [0.02, 0.0025]], sigma2 = 0.25, J = 50, n = 10",
           ds, "y ~ xc + (xc | g)", data_note = "xc = x - mean(x), rounded to 6 decimals")
  add_fits("bigx", "the same data, x ~ N(1e4, 10^2) uncentred", ds, "y ~ x + (x | g)",
           carry = list(from = "bigx_centred", M = matrix(c(1, 0, -xbar, 1), 2), terms = 2))
})

# ---------------------------------------------------------------------------
# (iv) HSB: the 16 models of hsb_lme4.json, refitted at the tight optimum
# ---------------------------------------------------------------------------
local({
  path <- file.path(repo_root, "mlmsim", "datasets", "hsb.csv")
  d <- read.csv(path)
  d$cses <- d$ses - d$meanses
  d$size100 <- d$size / 100
  ds <- list(data = d, file = rel(path))
  hsb <- fromJSON(file.path(script_dir, "hsb_lme4.json"), simplifyVector = FALSE)
  seen <- character(0)
  for (e in hsb) {
    if (e$formula %in% seen) next
    seen <- c(seen, e$formula)
    add_fits(paste0("hsb_", e$model), "HSB, the model of hsb_lme4.json", ds, e$formula,
             data_note = "cses = ses - meanses, size100 = size / 100")
  }
})

out <- file.path(script_dir, "inference_reference.json")
write_json(fits, out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %d fits to %s", length(fits), rel(out)))
