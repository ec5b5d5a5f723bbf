# make_lme4_reference.R -- lme4 reference fits near and on the boundary of the
# parameter space, for mlmsim's engine tests (so that the tests never need R).
#
# Provenance
#   Written for R 4.2.2 with lme4 1.1-31, lmerTest 3.1-3 and jsonlite 1.8.4.
#   Run from the repository root:
#       Rscript tests/data/make_lme4_reference.R
#   It writes, next to itself (tests/data/):
#     * lme4_*.csv         small simulated two-level data sets (set.seed, so
#                          the files are the same on every run of this R version);
#     * lme4_boundary.json one entry per lme4 fit (fields: lme4_boundary.md).
#   The NELS-88 fits read mlmsim/datasets/nels88_23.csv (private = 1 - public).
#
# Every simulated column is rounded to 6 decimals before it is written, and
# the fits use the data read back from the CSV file, so Python reading the same
# file sees exactly the numbers lme4 saw.
#
# Fits use lmer()'s defaults (optimizer nloptwrap, i.e. NLopt's BOBYQA) as a
# user would; each entry also records the criterion reached by minqa's bobyqa
# and by Nelder_Mead from the same start (`alt_optimizers`), so a test can
# tell lme4's stopping noise from a genuinely better optimum.

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else "tests/data"
})
source(file.path(script_dir, "reference_common.R"))  # libraries, rel, capture, varcorr_rows, entry_head

# ---------------------------------------------------------------------------
# Simulation helpers: y = X gamma + Z u_j + e, u_j ~ N(0, T), e ~ N(0, sigma2)
# ---------------------------------------------------------------------------

draw_u <- function(J, T) {
  # J x q matrix of random effects with covariance T (T may be singular).
  q <- nrow(T)
  ev <- eigen(T, symmetric = TRUE)
  root <- ev$vectors %*% diag(sqrt(pmax(ev$values, 0)), q)
  matrix(rnorm(J * q), J, q) %*% t(root)
}

write_data <- function(df, name) {
  path <- file.path(script_dir, name)
  num <- vapply(df, is.numeric, logical(1))
  num[names(df) %in% c("g")] <- FALSE
  df[num] <- lapply(df[num], function(v) round(v, 6))
  write.csv(df, path, row.names = FALSE, quote = FALSE)
  back <- read.csv(path, stringsAsFactors = FALSE)
  list(data = back, file = rel(path))
}

sim_slope <- function(J, n, gamma, T, sigma) {
  # Level-1 predictor x ~ N(0, 1); random intercept and slope of x.
  g <- rep(seq_len(J), each = n)
  x <- rnorm(J * n)
  u <- draw_u(J, T)
  y <- gamma[1] + gamma[2] * x + u[g, 1] + u[g, 2] * x + rnorm(J * n, sd = sigma)
  data.frame(g = g, x = x, y = y)
}

# ---------------------------------------------------------------------------
# One lme4 fit -> one JSON entry
# ---------------------------------------------------------------------------


named_list <- function(v) as.list(v)
json_array <- function(v) if (is.null(v)) NULL else I(unname(as.numeric(v)))

fit_entry <- function(id, case, ds, formula, reml, data_note = NULL) {
  f <- as.formula(formula)
  data <- ds$data
  fit <- capture(lmer(f, data = data, REML = reml))
  m <- fit$value

  varcorr <- varcorr_rows(m)
  # T as a matrix, lme4's random-effect order (block-diagonal for || or several bars).
  vcm <- VarCorr(m)
  re_names <- unlist(lapply(vcm, colnames), use.names = FALSE)
  T <- as.matrix(Matrix::bdiag(lapply(vcm, function(b) {
    b <- unclass(b)
    attr(b, "stddev") <- NULL
    attr(b, "correlation") <- NULL
    b
  })))
  theta <- getME(m, "theta")

  # Satterthwaite df through lmerTest, on this very fit.
  sat <- capture(tryCatch({
    mt <- lmerTest::as_lmerModLmerTest(m)
    cf <- summary(mt)$coefficients
    setNames(cf[, "df"], rownames(cf))
  }, error = function(e) structure(NA, error = conditionMessage(e))))
  df_sat <- sat$value
  sat_error <- attr(df_sat, "error")
  if (!is.null(sat_error) || all(is.na(df_sat))) df_sat <- NULL

  derivs <- m@optinfo$derivs
  lme4_derivs <- if (is.null(derivs)) NULL else {
    H <- derivs$Hessian
    list(
      gradient = json_array(derivs$gradient),
      hessian = if (is.null(H)) NULL else lapply(seq_len(nrow(H)), function(i) I(H[i, ])),
      hessian_eigenvalues = if (is.null(H)) NULL else
        json_array(eigen(H, symmetric = TRUE, only.values = TRUE)$values)
    )
  }

  alt <- lapply(c("bobyqa", "Nelder_Mead"), function(opt) {
    a <- capture(lmer(f, data = data, REML = reml, control = lmerControl(optimizer = opt)))
    list(optimizer = opt, minus2ll = -2 * as.numeric(logLik(a$value)),
         theta = json_array(getME(a$value, "theta")))
  })

  re <- ranef(m)[[1]]
  ll <- logLik(m)
  c(entry_head(id, case, ds, data_note, formula, reml, m), list(
    satterthwaite_df = if (is.null(df_sat)) NULL else named_list(df_sat),
    varcorr = varcorr,
    T = list(names = I(re_names), matrix = lapply(seq_len(nrow(T)), function(i) I(T[i, ]))),
    sigma2 = sigma(m)^2,
    theta = json_array(theta),
    theta_names = I(names(theta)),
    loglik = as.numeric(ll),
    minus2ll = if (reml) REMLcrit(m) else deviance(m),
    aic = AIC(m),
    bic = BIC(m),
    singular = isSingular(m),
    messages = I(c(fit$messages, fit$warnings)),
    warnings = I(fit$warnings),
    conv_messages = I(as.character(unlist(m@optinfo$conv$lme4$messages))),
    optimizer = m@optinfo$optimizer,
    optimizer_code = m@optinfo$conv$opt,
    lme4_derivs = lme4_derivs,
    satterthwaite_messages = I(c(sat$messages, sat$warnings, sat_error)),
    alt_optimizers = alt,
    ranef = list(groups = I(rownames(re)),
                 values = lapply(names(re), function(k) list(name = k, value = I(re[[k]]))))
  ))
}

fits <- list()
add_fits <- function(id, case, ds, formulas, remls = c(FALSE, TRUE), data_note = NULL) {
  for (formula in formulas) {
    for (reml in remls) {
      key <- sprintf("%s/%s/%s", id, formula, if (reml) "REML" else "ML")
      message("fitting ", key)
      fits[[length(fits) + 1]] <<- fit_entry(id, case, ds, formula, reml, data_note)
    }
  }
}

# ---------------------------------------------------------------------------
# (i) random slope whose true variance is 0: J = 30 groups of 8
# ---------------------------------------------------------------------------
set.seed(20240101)
ds <- write_data(sim_slope(30, 8, c(1, 0.5), matrix(c(1, 0, 0, 0), 2), 1),
                 "lme4_slope_var0.csv")
add_fits("slope_var0", "true slope variance 0 (T = diag(1, 0), sigma2 = 1), J = 30, n = 8",
         ds, "y ~ x + (1 + x | g)")

# ---------------------------------------------------------------------------
# (ii) true T singular with correlation exactly 1 (sd 1 and 0.5): J = 40 groups of 6
# ---------------------------------------------------------------------------
set.seed(20240102)
ds <- write_data(sim_slope(40, 6, c(1, 0.5), matrix(c(1, 0.5, 0.5, 0.25), 2), 1),
                 "lme4_corr1.csv")
add_fits("corr1", "true corr(U0, U1) = 1 (sd 1 and 0.5), sigma2 = 1, J = 40, n = 6",
         ds, "y ~ x + (1 + x | g)")
# A second draw from the same model whose ML and REML fits land on corr = 1
# (the first one's estimate stays just inside, corr about 0.98).
set.seed(20240200)
ds <- write_data(sim_slope(40, 6, c(1, 0.5), matrix(c(1, 0.5, 0.5, 0.25), 2), 1),
                 "lme4_corr1_b.csv")
add_fits("corr1_b", "true corr(U0, U1) = 1 (sd 1 and 0.5), sigma2 = 1, J = 40, n = 6",
         ds, "y ~ x + (1 + x | g)")

# ---------------------------------------------------------------------------
# (iii) redundant dummies: female and male = 1 - female, J = 40 groups of 10
# true model: random intercept + female slope, T = [[1, -0.21], [-0.21, 0.49]]
# ---------------------------------------------------------------------------
set.seed(20240103)
local({
  J <- 40
  n <- 10
  g <- rep(seq_len(J), each = n)
  female <- rbinom(J * n, 1, 0.5)
  u <- draw_u(J, matrix(c(1, -0.21, -0.21, 0.49), 2))
  y <- 1 + 0.5 * female + u[g, 1] + u[g, 2] * female + rnorm(J * n)
  ds <<- write_data(data.frame(g = g, female = female, male = 1 - female, y = y),
                    "lme4_dummies.csv")
})
add_fits("dummies",
         "female + male = 1 dummies; true (1 + female | g), T = [[1, -0.21], [-0.21, 0.49]], J = 40, n = 10",
         ds, c("y ~ female + (1 + female + male | g)",
               "y ~ female + (1 + female | g)",
               "y ~ female + (0 + female + male | g)"))

# ---------------------------------------------------------------------------
# (iv) random intercept only, tiny true variance (tau0^2 = 0.01, sigma2 = 1),
# J = 10 groups of 5, five data sets
# ---------------------------------------------------------------------------
for (s in 1:5) {
  set.seed(20240110 + s)
  J <- 10
  n <- 5
  g <- rep(seq_len(J), each = n)
  y <- 1 + rnorm(J, sd = 0.1)[g] + rnorm(J * n)
  ds <- write_data(data.frame(g = g, y = y), sprintf("lme4_tinyvar_%d.csv", s))
  add_fits(sprintf("tinyvar_%d", s),
           "random intercept, tau0^2 = 0.01, sigma2 = 1, J = 10, n = 5", ds, "y ~ 1 + (1 | g)")
}

# ---------------------------------------------------------------------------
# (v) uncorrelated random effects on data with a nonzero slope variance
# T = [[1, 0.15], [0.15, 0.25]], sigma2 = 1, J = 30 groups of 10
# ---------------------------------------------------------------------------
set.seed(20240104)
ds <- write_data(sim_slope(30, 10, c(1, 0.5), matrix(c(1, 0.15, 0.15, 0.25), 2), 1),
                 "lme4_slope.csv")
add_fits("slope_diag", "nonzero slope, T = [[1, 0.15], [0.15, 0.25]], sigma2 = 1, J = 30, n = 10",
         ds, c("y ~ x + (1 + x || g)", "y ~ x + (1 | g) + (0 + x | g)", "y ~ x + (1 + x | g)"))

# ---------------------------------------------------------------------------
# (vi) categorical level-1 predictor with 3 levels (strings a, b, c; a is the reference)
# ---------------------------------------------------------------------------
set.seed(20240105)
local({
  J <- 30
  n <- 10
  g <- rep(seq_len(J), each = n)
  x <- rnorm(J * n)
  f <- sample(c("a", "b", "c"), J * n, replace = TRUE)
  u <- draw_u(J, matrix(c(1, 0.15, 0.15, 0.25), 2))
  y <- 1 + 0.5 * x + 0.3 * (f == "b") - 0.4 * (f == "c") + u[g, 1] + u[g, 2] * x + rnorm(J * n)
  ds <<- write_data(data.frame(g = g, x = x, f = f, y = y), "lme4_factor.csv")
})
add_fits("factor3", "3-level factor f (a, b, c) + x, T = [[1, 0.15], [0.15, 0.25]], J = 30, n = 10",
         ds, "y ~ x + f + (1 + x | g)")

# ---------------------------------------------------------------------------
# (vii) NELS-88, 23 schools (the seed's models)
# ---------------------------------------------------------------------------
local({
  path <- file.path(repo_root, "mlmsim", "datasets", "nels88_23.csv")
  d <- read.csv(path)
  d$private <- 1 - d$public
  ds <<- list(data = d, file = rel(path))
})
nels_note <- "private = 1 - public"
add_fits("nels88", "NELS-88 23 schools", ds,
         c("math ~ 1 + (1 | school)",
           "math ~ homework + (1 | school)",
           "math ~ homework + (1 + homework | school)",
           "math ~ homework + white + private + (1 + homework + private | school)"),
         data_note = nels_note)

out <- file.path(script_dir, "lme4_boundary.json")
write_json(fits, out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %d fits to %s", length(fits), rel(out)))
