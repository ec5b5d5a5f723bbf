# reference_common.R -- helpers shared by the reference scripts of tests/data/
# (make_lme4_reference.R, make_inference_reference.R, make_kr_reference.R), sourced by
# them after they have set `script_dir` (the folder of the script, tests/data/).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

# The two tight optimisers every reference fit is run with (the lower criterion is kept).
CONTROLS <- list(
  bobyqa = lmerControl(optimizer = "bobyqa",
                       optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nloptwrap = lmerControl(optimizer = "nloptwrap",
                          optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14,
                                         xtol_rel = 0, ftol_rel = 0, maxeval = 1e5))
)

repo_root <- normalizePath(file.path(script_dir, "..", ".."))
rel <- function(path) sub(paste0("^", repo_root, "/"), "", normalizePath(path))

# Run expr, keeping its value and the warnings and messages it raised.
capture <- function(expr) {
  msgs <- character(0)
  warns <- character(0)
  value <- withCallingHandlers(
    expr,
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
  list(value = value, messages = msgs, warnings = warns)
}

# lme4's as.data.frame(VarCorr(m)) as a list of rows (var2 NA for a variance).
varcorr_rows <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  lapply(seq_len(nrow(vc)), function(i) list(
    grp = vc$grp[i],
    var1 = if (is.na(vc$var1[i])) NA else vc$var1[i],
    var2 = if (is.na(vc$var2[i])) NA else vc$var2[i],
    vcov = vc$vcov[i],
    sdcor = vc$sdcor[i]
  ))
}

# The fields every JSON entry starts with: the fit's identity, data and fixed effects.
entry_head <- function(id, case, ds, data_note, formula, reml, m) {
  list(
    id = id,
    case = case,
    dataset = ds$file,
    data_note = data_note,
    formula = formula,
    reml = reml,
    nobs = nobs(m),
    ngroups = as.integer(ngrps(m)[[1]]),
    fixef = as.list(fixef(m)),
    se = as.list(sqrt(diag(as.matrix(vcov(m)))))
  )
}
