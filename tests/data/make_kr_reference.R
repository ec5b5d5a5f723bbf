# make_kr_reference.R -- Kenward-Roger reference numbers (pbkrtest and lmerTest) for
# mlmsim's small-sample inference tests, at a tightly converged REML optimum, next to
# lmerTest's Satterthwaite df for the same fits (so that the tests never need R).
#
# Provenance
#   Written for R 4.2.2 with lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, nlme 3.1-162,
#   Matrix 1.5-3 and jsonlite 1.8.4 (the versions of the run are also stored in the
#   JSON, `versions`, from packageVersion()).
#   Run from the repository root:
#       Rscript tests/data/make_kr_reference.R
#   (about a minute and a half, most of it the two largest HSB models; the outputs are
#   byte-identical from run to run).
#   It writes, next to itself (tests/data/):
#     * kr_sleepstudy.csv  lme4's sleepstudy (Reaction, Days, Subject);
#     * kr_orthodont.csv   nlme's Orthodont (distance, age, Subject, Sex; Subject and
#                          Sex as plain labels);
#     * kr_bodyweight.csv  nlme's BodyWeight (weight, Time, Diet, Rat; Diet and Rat as
#                          plain labels: the original 1, 2, 3 and 1..16, read back as
#                          character, see `label_columns`);
#     * kr_machines.csv    nlme's Machines (score, Machine, Worker; plain labels);
#     * kr_unbalanced.csv  simulated, 25 groups of 1 to 8 (7 singletons), level-2 z;
#     * kr_q3.csv          simulated, 40 groups of 6, three random effects;
#     * kr_q4.csv          simulated, 50 groups of 8, four random effects
#                          (set.seed per data set, so the files are the same on every
#                          run of this R version);
#     * kr_reference.json  {versions, models: one entry per fit, skipped}
#                          (fields: README.md in this folder).
#   The HSB fits read mlmsim/datasets/hsb.csv (cses = ses - meanses, size100 = size / 100,
#   as mlmsim.datasets.load("hsb") derives them); the formulas are those of
#   hsb_lme4.json (16 entries: 8 formulas, each by ML and REML), each fitted once, by REML.
#   Four more fits reuse those files (sleepstudy with a diagonal T, Orthodont with an
#   age x Sex interaction, the unbalanced design with x x z) or read
#   mlmsim/datasets/nels88_23.csv (a random slope of homework): 19 fits in all.
#   No model is skipped: pbkrtest's vcovAdj takes about 2 s on the largest HSB model
#   (its Sigma is block-diagonal, so the n x n inverse stays sparse); the slowest entry,
#   HSB crosslevel_sector, takes about 25 s, mostly lmerTest's summary(ddf =
#   "Kenward-Roger"), which calls vcovAdj once per coefficient.
#   jsonlite's digits = NA writes 15 significant digits (within 5e-15 relative of R's
#   doubles, not always the same double).
#
# Every simulated column is rounded to 6 decimals before it is written, and every
# fit uses the data read back from the CSV file, so Python reading the same file
# sees exactly the numbers lme4 saw. Label columns are read back as character.
#
# Every model is fitted by REML (Kenward-Roger is a REML method) at a tight optimum,
# as make_inference_reference.R does: minqa's bobyqa (rhoend = 1e-12, maxfun = 1e5)
# and NLopt's BOBYQA through nloptwrap (xtol_abs = 1e-12, ftol_abs = 1e-14,
# xtol_rel = ftol_rel = 0, maxeval = 1e5) from lme4's start, then each again from
# the best point found; the fit with the lower REML criterion is the reference.
# On it:
#   * pbkrtest::vcovAdj(m): the Kenward-Roger adjusted covariance of the fixed effects;
#   * lmerTest's summary(ddf = "Kenward-Roger") and summary(ddf = "Satterthwaite");
#   * for L = the joint test of all non-intercept fixed effects (where there are at
#     least two) and L = the first non-intercept coefficient alone:
#     pbkrtest::KRmodcomp(m, L), lmerTest::contest(m, L, ddf = "Kenward-Roger")
#     (which calls KRmodcomp itself: a cross-check of the two R front ends) and
#     lmerTest::contest(m, L, ddf = "Satterthwaite").

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else "tests/data"
})
source(file.path(script_dir, "reference_common.R"))  # libraries, rel, capture, varcorr_rows, entry_head
suppressPackageStartupMessages(library(pbkrtest))

t_start <- proc.time()[["elapsed"]]

write_data <- function(df, name, round_cols = character(0), labels = character(0)) {
  # Write df (simulated columns rounded to 6 decimals), read it back; label columns
  # come back as character even where they look like numbers.
  df[round_cols] <- lapply(df[round_cols], function(v) round(v, 6))
  write.csv(df, file.path(script_dir, name), row.names = FALSE, quote = FALSE)
  read_data(name, labels)
}

read_data <- function(name, labels = character(0)) {
  # A data file of this folder as the fits see it (label columns as character).
  path <- file.path(script_dir, name)
  classes <- setNames(rep("character", length(labels)), labels)
  back <- read.csv(path, stringsAsFactors = FALSE,
                   colClasses = if (length(labels)) classes else NA)
  list(data = back, file = rel(path), labels = labels)
}

json_array <- function(v) if (is.null(v)) NULL else I(unname(as.numeric(v)))
json_matrix <- function(M) lapply(seq_len(nrow(M)), function(i) I(unname(as.numeric(M[i, ]))))
named <- function(v) as.list(setNames(as.numeric(v), names(v)))

run_lmer <- function(formula, data, control, start = NULL) {
  # REML lmer in an environment of its own holding everything its call refers to, so
  # that lmerTest (which re-evaluates the call with devFunOnly = TRUE) can rebuild the
  # deviance function of this very fit.
  env <- new.env(parent = globalenv())
  env$f <- as.formula(formula, env = env)
  env$data <- data
  env$control <- control
  env$start <- start
  call <- if (is.null(start)) {
    quote(lme4::lmer(f, data = data, REML = TRUE, control = control))
  } else {
    quote(lme4::lmer(f, data = data, REML = TRUE, control = control, start = start))
  }
  fit <- capture(eval(call, env))
  fit$crit <- REMLcrit(fit$value)
  fit
}

tight_fit <- function(formula, data) {
  # Each optimiser from lme4's start, then each from the best point found so far;
  # the lowest REML criterion is the reference.
  tight <- list()
  for (opt in names(CONTROLS)) {
    tight[[length(tight) + 1]] <- list(optimizer = opt, start = "lme4",
                                       fit = run_lmer(formula, data, CONTROLS[[opt]]))
  }
  best_of <- function(fs) fs[[which.min(vapply(fs, function(t) t$fit$crit, numeric(1)))]]
  polish_from <- getME(best_of(tight)$fit$value, "theta")
  for (opt in names(CONTROLS)) {
    tight[[length(tight) + 1]] <- list(optimizer = opt, start = "polish",
                                       fit = run_lmer(formula, data, CONTROLS[[opt]], polish_from))
  }
  best <- best_of(tight)
  other <- best_of(Filter(function(t) t$optimizer != best$optimizer, tight))
  list(best = best, other = other, tight = tight)
}

kr_tests <- function(m, mt, name, L) {
  # One hypothesis L beta = 0: pbkrtest's KRmodcomp, and lmerTest's contest by
  # Kenward-Roger and by Satterthwaite.
  kr <- capture(pbkrtest::KRmodcomp(m, L))
  s <- kr$value$stats
  lt_kr <- capture(lmerTest::contest(mt, L, ddf = "Kenward-Roger"))
  lt_sat <- capture(lmerTest::contest(mt, L, ddf = "Satterthwaite"))
  ftable <- function(x) list(F = x[["F value"]], NumDF = x[["NumDF"]],
                             DenDF = x[["DenDF"]], p = x[["Pr(>F)"]])
  list(
    name = name,
    terms = I(colnames(L)[apply(L != 0, 1, which)]),
    L = json_matrix(L),
    pbkrtest = list(
      Fstat = s$Fstat,            # F.scaling * FstatU: the KR F statistic
      FstatU = s$FstatU,          # Wald / ndf with vcovAdj's covariance, not scaled
      F.scaling = s$F.scaling,
      ndf = s$ndf,
      ddf = s$ddf,
      p.value = s$p.value,
      p.valueU = s$p.valueU,      # FstatU on (ndf, ddf)
      aux = as.list(s$aux),       # A1, A2, V0, V1, V2, rho, F.scaling
      messages = I(c(kr$messages, kr$warnings))
    ),
    lmertest_kr = c(ftable(lt_kr$value),
                    list(messages = I(c(lt_kr$messages, lt_kr$warnings)))),
    lmertest_satterthwaite = c(ftable(lt_sat$value),
                               list(messages = I(c(lt_sat$messages, lt_sat$warnings))))
  )
}

fit_entry <- function(id, case, ds, formula, data_note = NULL, simulated = FALSE) {
  t0 <- proc.time()[["elapsed"]]
  tf <- tight_fit(formula, ds$data)
  m <- tf$best$fit$value
  if (simulated && isSingular(m)) stop(sprintf("%s: the simulated fit is singular", id))
  mt <- lmerTest::as_lmerModLmerTest(m)
  nm <- names(fixef(m))

  V <- as.matrix(vcov(m))
  vkr <- capture(pbkrtest::vcovAdj(m))
  Vkr <- as.matrix(vkr$value)
  attributes(Vkr) <- list(dim = dim(Vkr), dimnames = list(nm, nm))

  s_kr <- capture(summary(mt, ddf = "Kenward-Roger")$coefficients)
  s_sat <- capture(summary(mt, ddf = "Satterthwaite")$coefficients)
  ckr <- s_kr$value
  csat <- s_sat$value

  # Hypotheses: the joint test of the non-intercept coefficients (if at least two)
  # and the first non-intercept coefficient alone.
  slopes <- which(nm != "(Intercept)")
  tests <- list()
  if (length(slopes) >= 2) {
    L <- diag(length(nm))[slopes, , drop = FALSE]
    dimnames(L) <- list(NULL, nm)
    tests[[length(tests) + 1]] <- kr_tests(m, mt, "joint", L)
  }
  if (length(slopes) >= 1) {
    L <- diag(length(nm))[slopes[1], , drop = FALSE]
    dimnames(L) <- list(NULL, nm)
    tests[[length(tests) + 1]] <- kr_tests(m, mt, "first", L)
  }

  theta <- getME(m, "theta")
  e <- c(entry_head(id, case, ds, data_note, formula, TRUE, m), list(
    label_columns = I(ds$labels),
    fixef_names = I(nm),
    minus2ll = REMLcrit(m),
    sigma2 = sigma(m)^2,
    varcorr = varcorr_rows(m),
    theta = json_array(theta),
    theta_names = I(names(theta)),
    singular = isSingular(m),
    simulated = simulated,
    optimizer = tf$best$optimizer,
    start = tf$best$start,
    messages = I(c(tf$best$fit$messages, tf$best$fit$warnings)),
    other_optimizer = tf$other$optimizer,
    other_minus2ll = tf$other$fit$crit,
    tight_fits = lapply(tf$tight, function(t) list(optimizer = t$optimizer, start = t$start,
                                                   minus2ll = t$fit$crit)),
    vcov = json_matrix(V),
    vcov_kr = json_matrix(Vkr),
    se_kr = named(sqrt(diag(Vkr))),
    vcov_kr_messages = I(c(vkr$messages, vkr$warnings)),
    kr_se = named(setNames(ckr[, "Std. Error"], rownames(ckr))),
    kr_df = named(setNames(ckr[, "df"], rownames(ckr))),
    kr_t = named(setNames(ckr[, "t value"], rownames(ckr))),
    kr_p = named(setNames(ckr[, "Pr(>|t|)"], rownames(ckr))),
    kr_messages = I(c(s_kr$messages, s_kr$warnings)),
    satterthwaite_df = named(setNames(csat[, "df"], rownames(csat))),
    satterthwaite_t = named(setNames(csat[, "t value"], rownames(csat))),
    satterthwaite_p = named(setNames(csat[, "Pr(>|t|)"], rownames(csat))),
    satterthwaite_messages = I(c(s_sat$messages, s_sat$warnings)),
    tests = tests
  ))
  first <- if (length(slopes)) nm[slopes[1]] else NA
  message(sprintf(paste0("  %-30s REML %.10f (%s from %s, other %+.2g), singular %s; ",
                         "%s: KR df %.6g, Satterthwaite df %.6g; %.1f s"),
                  id, e$minus2ll, e$optimizer, e$start, e$other_minus2ll - e$minus2ll,
                  e$singular, first,
                  if (is.na(first)) NA else ckr[first, "df"],
                  if (is.na(first)) NA else csat[first, "df"],
                  proc.time()[["elapsed"]] - t0))
  e
}

fits <- list()
skipped <- list()
add_fit <- function(...) fits[[length(fits) + 1]] <<- fit_entry(...)

# ---------------------------------------------------------------------------
# (i) HSB: the 8 formulas of hsb_lme4.json (16 entries: ML and REML), by REML
# ---------------------------------------------------------------------------
local({
  path <- file.path(repo_root, "mlmsim", "datasets", "hsb.csv")
  d <- read.csv(path)
  d$cses <- d$ses - d$meanses
  d$size100 <- d$size / 100
  ds <- list(data = d, file = rel(path), labels = character(0))
  hsb <- fromJSON(file.path(script_dir, "hsb_lme4.json"), simplifyVector = FALSE)
  seen <- character(0)
  for (e in hsb) {
    if (e$formula %in% seen) next
    seen <- c(seen, e$formula)
    add_fit(paste0("hsb_", e$model), "HSB, the model of hsb_lme4.json, by REML", ds,
            e$formula, data_note = "cses = ses - meanses, size100 = size / 100")
  }
})

# ---------------------------------------------------------------------------
# (ii)-(v) data sets of R packages: the columns named, factors as plain labels
# ---------------------------------------------------------------------------
add_package_fit <- function(id, note, src, cols, labels, formula) {
  d <- as.data.frame(lapply(src[cols], function(v) if (is.factor(v)) as.character(v) else v))
  add_fit(id, note, write_data(d, paste0("kr_", id, ".csv"), labels = labels), formula)
}
add_package_fit("sleepstudy", "lme4::sleepstudy", sleepstudy,
                c("Reaction", "Days", "Subject"), "Subject",
                "Reaction ~ Days + (Days | Subject)")
# a level-2 factor Sex (reference Female: levels sorted)
add_package_fit("orthodont", "nlme::Orthodont (Sex: reference level Female, levels sorted)",
                nlme::Orthodont, c("distance", "age", "Subject", "Sex"), c("Subject", "Sex"),
                "distance ~ age + Sex + (age | Subject)")
# a level-2 factor Diet (reference 1)
add_package_fit("bodyweight", "nlme::BodyWeight (Diet as labels 1, 2, 3: reference 1)",
                nlme::BodyWeight, c("weight", "Time", "Diet", "Rat"), c("Diet", "Rat"),
                "weight ~ Time + Diet + (Time | Rat)")
# a level-1 factor Machine (reference A), random intercept
add_package_fit("machines", "nlme::Machines (Machine: reference A)", nlme::Machines,
                c("score", "Machine", "Worker"), c("Machine", "Worker"),
                "score ~ Machine + (1 | Worker)")

# ---------------------------------------------------------------------------
# Simulation: y = X gamma + Z u_j + e, u_j ~ N(0, T), e ~ N(0, sigma2)
# ---------------------------------------------------------------------------
draw_u <- function(J, T) matrix(rnorm(J * nrow(T)), J, nrow(T)) %*% chol(T)

# (vi) unbalanced, with singletons: J = 25 groups of sizes drawn from 1..8, the first
# five set to 1 (7 singletons in all, N = 98); x ~ N(0, 1) level 1, z ~ N(0, 1) level 2;
# y = 1 + 0.5 x + 0.8 z + U0 + U1 x + e, T = [[1, 0.3], [0.3, 0.5]], sigma2 = 0.5.
set.seed(20240611)
local({
  J <- 25
  nj <- sample(1:8, J, replace = TRUE)
  nj[1:5] <- 1L
  g <- rep(seq_len(J), nj)
  x <- rnorm(length(g))
  z <- rnorm(J)[g]
  u <- draw_u(J, matrix(c(1, 0.3, 0.3, 0.5), 2))
  y <- 1 + 0.5 * x + 0.8 * z + u[g, 1] + u[g, 2] * x + rnorm(length(g), sd = sqrt(0.5))
  ds <- write_data(data.frame(g = g, x = x, z = z, y = y), "kr_unbalanced.csv",
                   round_cols = c("x", "z", "y"))
  add_fit("unbalanced", sprintf(paste0(
    "simulated: J = 25 groups of sizes %s (%d singletons), N = %d, x level 1, z level 2; ",
    "gamma = (1, 0.5, 0.8), T = [[1, 0.3], [0.3, 0.5]], sigma2 = 0.5"),
    paste(nj, collapse = " "), sum(nj == 1), length(g)), ds, "y ~ x + z + (1 + x | g)",
    simulated = TRUE)
})

# (vii), (viii) q = 3 and 4: J groups of n, x1 .. x_{q-1} ~ N(0, 1) at level 1,
# y = gamma_0 + sum_k gamma_k x_k + U0 + sum_k U_k x_k + e, U_j ~ N(0, T), sigma2 = 1
# (terms added in this order; draws: the x's column by column, then U, then e).
add_sim_slopes <- function(id, J, n, gamma, T, note) {
  q <- nrow(T)
  g <- rep(seq_len(J), each = n)
  X <- matrix(rnorm(J * n * (q - 1)), J * n, q - 1)
  colnames(X) <- paste0("x", seq_len(q - 1))
  u <- draw_u(J, T)
  y <- gamma[1]
  for (k in seq_len(q - 1)) y <- y + gamma[k + 1] * X[, k]
  y <- y + u[g, 1]
  for (k in seq_len(q - 1)) y <- y + u[g, k + 1] * X[, k]
  y <- y + rnorm(J * n)
  xs <- colnames(X)
  ds <- write_data(data.frame(g = g, X, y = y), paste0("kr_", id, ".csv"),
                   round_cols = c(xs, "y"))
  rhs <- paste(xs, collapse = " + ")
  add_fit(id, note, ds, sprintf("y ~ %s + (1 + %s | g)", rhs, rhs), simulated = TRUE)
}
set.seed(20240612)
add_sim_slopes("q3", 40, 6, c(2, 0.5, -0.3),
               matrix(c(1, 0.2, -0.1, 0.2, 0.5, 0.1, -0.1, 0.1, 0.4), 3),
               paste0("simulated: J = 40 groups of 6, gamma = (2, 0.5, -0.3), ",
                      "T = [[1, 0.2, -0.1], [0.2, 0.5, 0.1], [-0.1, 0.1, 0.4]], sigma2 = 1"))
set.seed(20240613)
add_sim_slopes("q4", 50, 8, c(1, 0.4, 0.2, -0.5),
               matrix(c(1, 0.2, 0, 0.1,
                        0.2, 0.6, 0.1, 0,
                        0, 0.1, 0.5, -0.1,
                        0.1, 0, -0.1, 0.4), 4),
               paste0("simulated: J = 50 groups of 8, gamma = (1, 0.4, 0.2, -0.5), ",
                      "T = [[1, 0.2, 0, 0.1], [0.2, 0.6, 0.1, 0], [0, 0.1, 0.5, -0.1], ",
                      "[0.1, 0, -0.1, 0.4]], sigma2 = 1"))

# (ix) more models on the data sets above (block-diagonal T, a fixed interaction with a
# factor, a cross-level interaction), and NELS-88's random slope of homework
add_fit("sleepstudy_uncorrelated", "lme4::sleepstudy, T diagonal (two terms for Subject)",
        read_data("kr_sleepstudy.csv", "Subject"),
        "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)")
add_fit("orthodont_interaction", "nlme::Orthodont, age x Sex, random intercept",
        read_data("kr_orthodont.csv", c("Subject", "Sex")),
        "distance ~ age * Sex + (1 | Subject)")
add_fit("unbalanced_crosslevel", "the unbalanced design of (vi), x x z",
        read_data("kr_unbalanced.csv"), "y ~ x * z + (1 + x | g)", simulated = TRUE)
local({
  path <- file.path(repo_root, "mlmsim", "datasets", "nels88_23.csv")
  ds <- list(data = read.csv(path), file = rel(path), labels = character(0))
  add_fit("nels88_slope", "NELS-88 23 schools", ds,
          "math ~ homework + white + public + (1 + homework | school)")
})

versions <- c(list(R = paste(R.version$major, R.version$minor, sep = ".")),
              lapply(setNames(nm = c("lme4", "lmerTest", "pbkrtest", "nlme", "Matrix",
                                     "jsonlite")),
                     function(p) as.character(packageVersion(p))))
out <- file.path(script_dir, "kr_reference.json")
write_json(list(versions = versions, models = fits, skipped = skipped), out,
           auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %d fits to %s (%.0f s)", length(fits), rel(out),
                proc.time()[["elapsed"]] - t_start))
