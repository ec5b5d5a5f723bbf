# make_profile_reference.R -- likelihood-profile confidence intervals, parametric
# bootstrap and parametric-bootstrap likelihood-ratio tests from lme4 and pbkrtest, as
# references for mlmsim's profile, bootstrap and LRT code (so that the tests never need R),
# with lme4's run times for the benchmarks.
#
# Provenance
#   Written for R 4.2.2 with lme4 1.1-31, pbkrtest 0.5.2, Matrix 1.5-3, minqa 1.2.5,
#   nloptr 2.0.3 and jsonlite 1.8.4 (the versions of the run are also stored in both
#   JSON files, `versions`, from packageVersion()).
#   Run from the repository root:
#       Rscript tests/data/make_profile_reference.R
#   (about 11 minutes on one core: each of the four HSB bootstraps of 1000 refits takes
#   1.5 to 2.5 minutes, each PBmodcomp about 2, the profiles about 2 in all; the script
#   prints the time of each step). The fits, profiles and intervals are the same from
#   run to run; the `seconds_*` fields are wall-clock times of the run and change.
#   It writes, next to itself (tests/data/):
#     * profile_dyestuff.csv   lme4's Dyestuff (Batch, Yield; Batch as plain labels A..F);
#     * profile_dyestuff2.csv  lme4's Dyestuff2 (Batch, Yield), whose batch variance is
#                              estimated as 0;
#     * pb_moderate.csv        simulated (g, x, y), 20 groups of 10, for a PB test with a
#                              moderate p-value (details at the end of this script);
#     * profile_reference.json {versions, models: one entry per fit}
#     * boot_reference.json    {versions, bootstrap: the HSB bootstraps, pbmodcomp: the
#                              parametric-bootstrap LRTs}
#                              (fields of both: README.md in this folder).
#   and reads the data files inference_sleepstudy.csv (lme4's sleepstudy; Subject read as
#   labels) and kr_orthodont.csv (nlme's Orthodont; Subject and Sex read as labels) of
#   this folder, and mlmsim/datasets/hsb.csv (cses = ses - meanses, as
#   mlmsim.datasets.load("hsb") derives it).
#   jsonlite's digits = NA writes 15 significant digits (within 5e-15 relative of R's
#   doubles, not always the same double).
#
# Every fit uses the data read back from the CSV file, so Python reading the same file
# sees exactly the numbers lme4 saw. Every fit is lmer's default (nloptwrap, default
# control), as a user of lme4 runs it: the references are lme4's answers, not a tight
# optimum (compare inference_reference.json for that).
#
# (a) Profiles (profile_reference.json). Each model is fitted by ML and by REML; on each
#     fit: confint(m, method = "profile") at level 0.95 (timed: seconds_profile_confint)
#     and 0.90, and confint(profile(m, delta.cutoff = 1/32), level = 0.95), a profile
#     with four times as many points as lme4's default (delta.cutoff = 1/8), which shows
#     how far lme4's spline interpolation of the profile moves the limits. lme4 profiles
#     the ML deviance even for a REML fit (its devfun2 refits by ML), so the REML and ML
#     entries of a model differ only through the point the profile starts from.
# (b) Bootstrap (boot_reference.json, `bootstrap`). HSB mathach ~ cses + (1 + cses |
#     school), REML and ML: set.seed(20261204); bootMer(m, FUN, nsim = 1000,
#     use.u = FALSE, type = "parametric") with FUN = fixed effects, var((Intercept)),
#     cov((Intercept),cses), var(cses), sigma2, cor((Intercept),cses) and isSingular()
#     of each refit; then set.seed(20261204) again and confint(m, method = "boot",
#     nsim = 1000, boot.type = "perc") (lme4's own interval, sd / cor scale, the same
#     simulated responses).
# (c) PB LRT (boot_reference.json, `pbmodcomp`). pbkrtest::PBmodcomp(large, small, nsim)
#     after set.seed(20261204), ML fits: HSB (1 + cses | school) vs (1 | school),
#     nsim = 1000, and the simulated pb_moderate.csv, (1 + x | g) vs (1 | g),
#     nsim = 5000.

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else "tests/data"
})
source(file.path(script_dir, "reference_common.R"))  # libraries, rel, capture, varcorr_rows
suppressPackageStartupMessages(library(pbkrtest))

t_start <- proc.time()[["elapsed"]]
SEED <- 20261204

elapsed <- function(expr) {
  # Evaluate expr (lazily, here) and return list(value, seconds of wall clock).
  t0 <- proc.time()[["elapsed"]]
  value <- expr
  list(value = value, seconds = proc.time()[["elapsed"]] - t0)
}

write_data <- function(df, name, round_cols = character(0), labels = character(0)) {
  # Write df (simulated columns rounded to 6 decimals), read it back.
  df[round_cols] <- lapply(df[round_cols], function(v) round(v, 6))
  write.csv(df, file.path(script_dir, name), row.names = FALSE, quote = FALSE)
  read_data(file.path(script_dir, name), labels)
}

read_data <- function(path, labels = character(0)) {
  # A data file as the fits see it (label columns as character).
  classes <- setNames(rep("character", length(labels)), labels)
  back <- read.csv(path, stringsAsFactors = FALSE,
                   colClasses = if (length(labels)) classes else NA)
  list(data = back, file = rel(path), labels = labels)
}

json_array <- function(v) if (is.null(v)) NULL else I(unname(as.numeric(v)))

fit_fields <- function(m, reml) {
  # What every entry says of its lmer fit, in the JSON's key order.
  list(reml = reml, nobs = nobs(m), ngroups = as.integer(ngrps(m)[[1]]),
       fixef = as.list(fixef(m)), sigma2 = sigma(m)^2, varcorr = varcorr_rows(m),
       minus2ll = if (reml) REMLcrit(m) else deviance(m),
       theta = json_array(getME(m, "theta")))
}
named <- function(v) as.list(setNames(as.numeric(v), names(v)))
distinct <- function(cap) I(unique(c(cap$messages, cap$warnings)))

fit_lmer <- function(formula, data, reml) {
  # lmer (default control) in an environment of its own holding everything its call
  # refers to, so that anything re-evaluating the call finds the same objects.
  env <- new.env(parent = globalenv())
  env$f <- as.formula(formula, env = env)
  env$data <- data
  env$reml <- reml
  capture(eval(quote(lme4::lmer(f, data = data, REML = reml)), env))
}

ci_rows <- function(ci) {
  # confint()'s matrix as {row name: {lower, upper}} (NA -> null).
  out <- lapply(seq_len(nrow(ci)), function(i) list(lower = ci[i, 1], upper = ci[i, 2]))
  setNames(out, rownames(ci))
}

profile_names <- function(m) {
  # What each of lme4's .sigNN is: for each random term, the lower triangle of its
  # covariance column by column (sd of the diagonal, correlation below it), as in theta.
  cn <- getME(m, "cnms")
  out <- character(0)
  for (grp in names(cn)) {
    nm <- cn[[grp]]
    for (j in seq_along(nm)) for (i in j:length(nm)) {
      out <- c(out, if (i == j) sprintf("sd(%s)", nm[i]) else sprintf("cor(%s,%s)", nm[j], nm[i]))
    }
  }
  lme4_names <- lme4:::tnames(m, old = FALSE, prefix = c("sd", "cor"))
  if (length(lme4_names) != length(out)) stop("profile_names: unexpected random terms")
  keys <- c(sprintf(".sig%02d", seq_along(out)), ".sigma")
  list(names = as.list(setNames(c(out, "sigma"), keys)),
       lme4 = as.list(setNames(c(unname(lme4_names), "sigma"), keys)))
}

median_fit_seconds <- function(formula, data, reml, runs = 5) {
  secs <- vapply(seq_len(runs), function(i) {
    elapsed(suppressMessages(suppressWarnings(
      lme4::lmer(as.formula(formula), data = data, REML = reml))))$seconds
  }, numeric(1))
  list(median = median(secs), runs = secs)
}

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
hsb <- local({
  path <- file.path(repo_root, "mlmsim", "datasets", "hsb.csv")
  d <- read.csv(path)
  d$cses <- d$ses - d$meanses
  list(data = d, file = rel(path), labels = character(0))
})
to_labels <- function(df) as.data.frame(lapply(df, function(v) if (is.factor(v)) as.character(v) else v),
                                        stringsAsFactors = FALSE)
DATA <- list(
  hsb = c(hsb, list(note = "cses = ses - meanses",
                    formula = "mathach ~ cses + (1 + cses | school)")),
  sleepstudy = c(read_data(file.path(script_dir, "inference_sleepstudy.csv"), "Subject"),
                 list(note = "lme4::sleepstudy (Subject as labels)",
                      formula = "Reaction ~ Days + (Days | Subject)")),
  orthodont = c(read_data(file.path(script_dir, "kr_orthodont.csv"), c("Subject", "Sex")),
                list(note = "nlme::Orthodont (Subject as labels; Sex unused)",
                     formula = "distance ~ age + (age | Subject)")),
  dyestuff = c(write_data(to_labels(lme4::Dyestuff[, c("Batch", "Yield")]),
                          "profile_dyestuff.csv", labels = "Batch"),
               list(note = "lme4::Dyestuff (Batch as labels)",
                    formula = "Yield ~ 1 + (1 | Batch)")),
  dyestuff2 = c(write_data(to_labels(lme4::Dyestuff2[, c("Batch", "Yield")]),
                           "profile_dyestuff2.csv", labels = "Batch"),
                list(note = "lme4::Dyestuff2 (Batch as labels); batch variance estimated as 0",
                     formula = "Yield ~ 1 + (1 | Batch)"))
)

versions <- c(list(R = paste(R.version$major, R.version$minor, sep = ".")),
              lapply(setNames(nm = c("lme4", "pbkrtest", "Matrix", "minqa", "nloptr",
                                     "jsonlite")),
                     function(p) as.character(packageVersion(p))))

# ---------------------------------------------------------------------------
# (a) Profile intervals
# ---------------------------------------------------------------------------
profile_entry <- function(dataset, reml) {
  ds <- DATA[[dataset]]
  t0 <- proc.time()[["elapsed"]]
  fit <- fit_lmer(ds$formula, ds$data, reml)
  m <- fit$value
  theta <- getME(m, "theta")
  pn <- profile_names(m)

  ci95 <- elapsed(capture(confint(m, method = "profile", level = 0.95)))
  ci90 <- capture(confint(m, method = "profile", level = 0.90))
  prof_tight <- capture(profile(m, delta.cutoff = 1 / 32))
  ci_tight <- capture(confint(prof_tight$value, level = 0.95))
  fit_secs <- median_fit_seconds(ds$formula, ds$data, reml)

  e <- c(list(
    id = paste0(dataset, if (reml) "_reml" else "_ml"),
    dataset = dataset,
    csv = ds$file,
    data_note = ds$note,
    label_columns = I(ds$labels),
    formula = ds$formula),
    fit_fields(m, reml), list(
    theta_names = I(names(theta)),
    singular = isSingular(m),
    messages = distinct(fit),
    profile_names = pn$names,
    profile_names_lme4 = pn$lme4,
    profile_ci = ci_rows(ci95$value$value),
    profile_ci_messages = distinct(ci95$value),
    profile_ci_90 = ci_rows(ci90$value),
    profile_ci_90_messages = distinct(ci90),
    profile_ci_tight = ci_rows(ci_tight$value),
    profile_ci_tight_messages = distinct(list(messages = c(prof_tight$messages, ci_tight$messages),
                                              warnings = c(prof_tight$warnings, ci_tight$warnings))),
    seconds_profile_confint = ci95$seconds,
    seconds_lmer_fit = fit_secs$median,
    seconds_lmer_fit_runs = json_array(fit_secs$runs)
  ))
  a <- ci95$value$value
  b <- ci_tight$value
  message(sprintf("  %-16s -2LL %.6f, singular %s; profile %.2f s, lmer %.3f s; max |tight - default| %.3g (%.1f s)",
                  e$id, e$minus2ll, e$singular, e$seconds_profile_confint, e$seconds_lmer_fit,
                  max(abs(a - b), na.rm = TRUE), proc.time()[["elapsed"]] - t0))
  e
}

message("profiles")
models <- list()
for (dataset in names(DATA)) for (reml in c(FALSE, TRUE)) {
  models[[length(models) + 1]] <- profile_entry(dataset, reml)
}
out <- file.path(script_dir, "profile_reference.json")
write_json(list(versions = versions, models = models), out,
           auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %d fits to %s (%.0f s)", length(models), rel(out),
                proc.time()[["elapsed"]] - t_start))

# ---------------------------------------------------------------------------
# (b) Parametric bootstrap of the HSB random-slope model
# ---------------------------------------------------------------------------
BOOT_PARAMS <- c("(Intercept)", "cses", "var((Intercept))", "cov((Intercept),cses)",
                 "var(cses)", "sigma2", "cor((Intercept),cses)")

boot_fun <- function(x) {
  # The statistics of one (re)fit: fixed effects, the covariance parameters on the
  # variance scale, the correlation, and whether the refit is singular (1 / 0).
  vc <- as.data.frame(VarCorr(x))
  row <- function(v1, v2) {
    i <- which(vc$grp == "school" & vc$var1 == v1 &
                 (if (is.na(v2)) is.na(vc$var2) else (!is.na(vc$var2) & vc$var2 == v2)))
    vc[i, ]
  }
  cv <- row("(Intercept)", "cses")
  c(fixef(x),
    "var((Intercept))" = row("(Intercept)", NA)$vcov,
    "cov((Intercept),cses)" = cv$vcov,
    "var(cses)" = row("cses", NA)$vcov,
    "sigma2" = sigma(x)^2,
    "cor((Intercept),cses)" = cv$sdcor,
    ".singular" = as.numeric(isSingular(x)))
}

msg_table <- function(msgs) {
  # Distinct messages with their counts, lme4's "max|grad| = 0.00123" replaced by
  # "max|grad| = <x>" so that the convergence warnings of many refits form one row.
  msgs <- sub("max\\|grad\\| = [^ ]+", "max|grad| = <x>", as.character(msgs))
  if (length(msgs) == 0) return(list())
  tab <- table(msgs)
  lapply(seq_along(tab), function(i) list(message = names(tab)[i], count = as.integer(tab[[i]])))
}
expand_table <- function(tab) if (is.null(tab) || length(tab) == 0) character(0) else rep(names(tab), as.integer(tab))

boot_entry <- function(reml) {
  ds <- DATA$hsb
  fit <- fit_lmer(ds$formula, ds$data, reml)
  m <- fit$value
  set.seed(SEED)
  b <- elapsed(capture(bootMer(m, FUN = boot_fun, nsim = 1000, use.u = FALSE,
                               type = "parametric")))
  bt <- b$value$value
  tt <- bt$t
  colnames(tt) <- names(bt$t0)
  failed <- apply(tt, 1, function(r) all(is.na(r)))
  stats <- lapply(setNames(nm = BOOT_PARAMS), function(p) {
    v <- tt[!failed, p]
    q <- quantile(v, c(0.025, 0.975), type = 7, na.rm = TRUE, names = FALSE)
    list(estimate = unname(bt$t0[[p]]), lower = q[1], upper = q[2], mean = mean(v, na.rm = TRUE),
         sd = sd(v, na.rm = TRUE), n = sum(!is.na(v)))
  })
  all_msgs <- attr(bt, "boot.all.msgs")

  set.seed(SEED)
  cb <- elapsed(capture(confint(m, method = "boot", nsim = 1000, boot.type = "perc")))

  e <- c(list(
    id = paste0("hsb_slope", if (reml) "_reml" else "_ml"),
    dataset = "hsb",
    csv = ds$file,
    data_note = ds$note,
    formula = ds$formula),
    fit_fields(m, reml), list(
    messages = distinct(fit),
    seed = SEED,
    nsim = 1000L,
    use_u = FALSE,
    type = "parametric",
    params = I(BOOT_PARAMS),
    boot = stats,
    n_singular = as.integer(sum(tt[!failed, ".singular"] == 1)),
    n_failed = as.integer(sum(failed)),
    n_failed_lme4 = as.integer(attr(bt, "bootFail")),
    n_cor_nan = as.integer(sum(is.na(tt[!failed, "cor((Intercept),cses)"]))),
    refit_warnings = msg_table(expand_table(all_msgs[["factory-warning"]])),
    refit_messages = msg_table(expand_table(all_msgs[["factory-message"]])),
    refit_errors = msg_table(expand_table(all_msgs[["factory-error"]])),
    bootmer_messages = distinct(b$value),
    seconds_bootmer = b$seconds,
    confint_boot = ci_rows(cb$value$value),
    confint_boot_messages = distinct(cb$value),
    seconds_confint_boot = cb$seconds
  ))
  message(sprintf("  %-16s bootMer %.1f s (%d singular, %d failed), confint boot %.1f s",
                  e$id, e$seconds_bootmer, e$n_singular, e$n_failed, e$seconds_confint_boot))
  e
}

message("bootstrap")
boots <- list(boot_entry(TRUE), boot_entry(FALSE))

# ---------------------------------------------------------------------------
# (c) Parametric-bootstrap likelihood-ratio tests
# ---------------------------------------------------------------------------
pb_entry <- function(id, ds, large, small, nsim, note) {
  L <- fit_lmer(large, ds$data, FALSE)
  S <- fit_lmer(small, ds$data, FALSE)
  set.seed(SEED)
  pb <- elapsed(capture(pbkrtest::PBmodcomp(L$value, S$value, nsim = nsim)))
  r <- pb$value$value
  tst <- r$test
  smp <- attr(r$ref, "samples")
  ref <- as.numeric(r$ref)
  sm <- summary(r)$test
  list(
    id = id,
    csv = ds$file,
    data_note = note,
    large = large,
    small = small,
    reml = FALSE,
    minus2ll_large = deviance(L$value),
    minus2ll_small = deviance(S$value),
    singular_large = isSingular(L$value),
    singular_small = isSingular(S$value),
    fit_messages = I(unique(c(L$messages, L$warnings, S$messages, S$warnings))),
    seed = SEED,
    nsim = as.integer(nsim),
    lrt = tst["LRT", "stat"],
    df = tst["LRT", "df"],
    p_chisq = tst["LRT", "p.value"],
    p_pb = tst["PBtest", "p.value"],
    nsim_used = as.integer(smp[["npos"]]),
    n_extreme = as.integer(smp[["n.extreme"]]),
    n_ref = length(ref),
    n_ref_nonpositive = as.integer(sum(ref <= 0)),
    p_pb_all = (1 + sum(ref > tst["LRT", "stat"])) / (1 + length(ref)),
    ref_mean = mean(ref[ref > 0]),
    ref_var = var(ref[ref > 0]),
    ref_quantiles = as.list(setNames(quantile(ref, c(0.5, 0.9, 0.95, 0.99), type = 7,
                                              names = FALSE), c("0.5", "0.9", "0.95", "0.99"))),
    summary_tests = lapply(setNames(nm = rownames(sm)), function(k) as.list(sm[k, ])),
    messages = msg_table(c(pb$value$messages, pb$value$warnings)),
    seconds = pb$seconds
  )
}

message("PBmodcomp")
pbs <- list()
pbs[[1]] <- pb_entry("hsb_slope", DATA$hsb, "mathach ~ cses + (1 + cses | school)",
                     "mathach ~ cses + (1 | school)", 1000, DATA$hsb$note)
message(sprintf("  hsb_slope LRT %.4f, p chisq %.3g, p PB %.3g (%.0f s)", pbs[[1]]$lrt,
                pbs[[1]]$p_chisq, pbs[[1]]$p_pb, pbs[[1]]$seconds))

# pb_moderate.csv: for data seed s = 1, 2, ...: set.seed(s); J = 20 groups of 10;
# x ~ N(0, 1) (200 draws), u0 ~ N(0, 1) (20), u1 ~ N(0, 0.05) (20, independent of u0),
# e ~ N(0, 1) (200), in that order; y = 1 + 0.5 x + u0_g + u1_g x + e; x and y rounded
# to 6 decimals. A seed is kept when the large ML fit is not singular (a boundary fit
# makes the LRT depend on how well the optimiser reaches the boundary) and the PB
# p-value with nsim = 5000 lies in [0.02, 0.5]. Seeds 1 and 2 give singular large fits
# (correlation +1; their chi-square p-values 0.37 and 0.98); seed 3 is kept.
sim_moderate <- function(s) {
  set.seed(s)
  J <- 20
  n <- 10
  g <- rep(seq_len(J), each = n)
  x <- rnorm(J * n)
  u0 <- rnorm(J, 0, 1)
  u1 <- rnorm(J, 0, sqrt(0.05))
  y <- 1 + 0.5 * x + u0[g] + u1[g] * x + rnorm(J * n)
  data.frame(g = g, x = x, y = y)
}
seed_search <- list()
for (s in 1:20) {
  d <- sim_moderate(s)
  d$x <- round(d$x, 6)
  d$y <- round(d$y, 6)
  L <- fit_lmer("y ~ x + (1 + x | g)", d, FALSE)
  S <- fit_lmer("y ~ x + (1 | g)", d, FALSE)
  lrt <- deviance(S$value) - deviance(L$value)
  tried <- list(seed = s, singular_large = isSingular(L$value), lrt = lrt,
                p_chisq = pchisq(lrt, 2, lower.tail = FALSE), p_pb = NA)
  if (!tried$singular_large) {
    ds <- write_data(sim_moderate(s), "pb_moderate.csv", round_cols = c("x", "y"))
    e <- pb_entry("moderate", ds, "y ~ x + (1 + x | g)", "y ~ x + (1 | g)", 5000,
                  sprintf(paste0("simulated (data seed %d): J = 20 groups of 10, x ~ N(0, 1), ",
                                 "y = 1 + 0.5 x + u0 + u1 x + e, var(u0) = 1, var(u1) = 0.05, ",
                                 "cov 0, sigma2 = 1"), s))
    tried$p_pb <- e$p_pb
  }
  seed_search[[length(seed_search) + 1]] <- tried
  message(sprintf("  moderate, data seed %d: singular %s, LRT %.4f, p chisq %.3g, p PB %s",
                  s, tried$singular_large, lrt, tried$p_chisq, format(tried$p_pb, digits = 3)))
  if (!is.na(tried$p_pb) && tried$p_pb >= 0.02 && tried$p_pb <= 0.5) break
}
if (is.na(tried$p_pb) || tried$p_pb < 0.02 || tried$p_pb > 0.5) stop("no data seed in 1..20 fits")
e$data_seed <- tried$seed
e$data_seed_search <- seed_search
pbs[[2]] <- e
message(sprintf("  moderate LRT %.4f, p chisq %.3g, p PB %.3g (%.0f s)", e$lrt, e$p_chisq,
                e$p_pb, e$seconds))

out <- file.path(script_dir, "boot_reference.json")
write_json(list(versions = versions, bootstrap = boots, pbmodcomp = pbs), out,
           auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null", null = "null")
message(sprintf("wrote %s (%.0f s in all)", rel(out), proc.time()[["elapsed"]] - t_start))
