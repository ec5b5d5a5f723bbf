# lme4_intervals.R -- time lme4's parametric bootstrap and profile intervals for
# mlmsim's benchmarks (called by benchmarks/bench_intervals.py).
#
# Usage:
#   Rscript --vanilla benchmarks/lme4_intervals.R DATA.csv FORMULA REML NSIM
#
# Fits lmer(FORMULA, REML = REML), then times, each once, end to end:
#   boot     bootMer(m, FUN = function(x) c(fixef(x), sigma(x)), nsim = NSIM,
#            use.u = FALSE, type = "parametric") -- NSIM refits
#   profile  confint(m, method = "profile") -- profile intervals for every parameter
# Output on stdout, tab separated: <what> <seconds>

suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 4) stop("usage: lme4_intervals.R DATA.csv FORMULA REML NSIM")
d <- read.csv(args[1], check.names = FALSE)
form <- as.formula(args[2])
reml <- as.logical(args[3])
nsim <- as.integer(args[4])
m <- lmer(form, data = d, REML = reml)
set.seed(1)
t0 <- Sys.time()
b <- suppressWarnings(suppressMessages(bootMer(m, FUN = function(x) c(fixef(x), sigma(x)),
                                               nsim = nsim, use.u = FALSE,
                                               type = "parametric")))
cat("boot\t", format(as.numeric(Sys.time() - t0, units = "secs"), digits = 6), "\n", sep = "")
t0 <- Sys.time()
ci <- suppressWarnings(suppressMessages(confint(m, method = "profile")))
cat("profile\t", format(as.numeric(Sys.time() - t0, units = "secs"), digits = 6), "\n",
    sep = "")
