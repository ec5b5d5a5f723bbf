# lmertest_power.R -- the simr way of a power curve, for mlmsim's benchmarks (called by
# benchmarks/bench_power.py): one lmerTest fit per simulated data set, in a loop.
#
# Usage:
#   Rscript --vanilla benchmarks/lmertest_power.R DATA.csv FORMULA TERM
#
#   DATA.csv  simulated data sets; columns .value (the design value, e.g. J) and .rep
#             separate them
#   FORMULA   the lme4 formula fitted to each, by REML
#   TERM      the fixed effect whose Satterthwaite t test is counted
#
# Each data set is fitted with lmerTest::lmer and its Satterthwaite p-value read from
# summary(); the splitting happens before timing. Output on stdout, tab separated:
#   fit  <value>  <rep>  <seconds>  <p>

suppressPackageStartupMessages(library(lmerTest))
args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 3) stop("usage: lmertest_power.R DATA.csv FORMULA TERM")
d <- read.csv(args[1], check.names = FALSE)
form <- as.formula(args[2])
term <- args[3]
sets <- split(d, list(d[[".value"]], d[[".rep"]]), drop = TRUE)
for (s in sets) {
  t0 <- Sys.time()
  m <- suppressWarnings(suppressMessages(lmer(form, data = s, REML = TRUE)))
  p <- coef(summary(m))[term, "Pr(>|t|)"]
  sec <- as.numeric(Sys.time() - t0, units = "secs")
  cat("fit\t", s[[".value"]][1], "\t", s[[".rep"]][1], "\t", format(sec, digits = 6), "\t",
      format(p, digits = 10), "\n", sep = "")
}
