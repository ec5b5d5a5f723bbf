"""The README's first command on a fresh machine: install, compile, run.

    python benchmarks/bench_first_run.py

Makes a fresh virtual environment, then times the two halves of the README's first
command (read from the README, so that this measures what a user types):

1. ``pip install .`` into the fresh environment (from pip's local cache of wheels where
   it has them, as on a machine that has installed Python packages before);
2. the study command with numba's cache empty (the first run after an install: it
   compiles the kernels), with the warm-up helper of ``mlmsim.engine.compiled``;
3. the same with the helper turned off (``MLMSIM_NO_WARM_UP=1``), every kernel compiled
   in the fitting process, as before the helper;
4. the same with the cache filled (every later run).

Steps 2 and 3 each get an empty ``NUMBA_CACHE_DIR``; step 4 reuses step 2's. Compile
time is a cold run minus the warm one. The quick output lands where the README says
(``results-quick/``, ignored by git).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_first_command() -> tuple[str, str]:
    """The README's first console line, split at ``&&`` into (install, run)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```console\n(.*?)```", text, re.S).group(1)
    install, run = (part.strip() for part in block.splitlines()[0].split("&&"))
    return install, run


def timed(cmd: str, env: dict, out: Path | None = None) -> float:
    """Seconds ``cmd`` takes in the repository's root; ``out``, the study folder it writes,
    is removed first (a finished study there would only be reported, not run)."""
    if out is not None:
        shutil.rmtree(ROOT / out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(shlex.split(cmd), cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    install, run = readme_first_command()
    words = shlex.split(run)
    out = Path(words[words.index("--out") + 1])
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "VIRTUAL_ENV": str(venv)}
        env.pop("PYTHONPATH", None)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--upgrade", "pip"], check=True, env=env)
        t_install = timed(f"{venv / 'bin' / 'python'} -m {install} --quiet", env)
        caches = [Path(tmp) / "cache-helper", Path(tmp) / "cache-alone"]
        for c in caches:
            c.mkdir()
        t_cold = timed(run, {**env, "NUMBA_CACHE_DIR": str(caches[0])}, out)
        t_alone = timed(run, {**env, "NUMBA_CACHE_DIR": str(caches[1]),
                              "MLMSIM_NO_WARM_UP": "1"}, out)
        t_warm = timed(run, {**env, "NUMBA_CACHE_DIR": str(caches[0])}, out)
    print(f"README's first command: {install} && {run}")
    print(f"  install                      {t_install:6.1f} s")
    print(f"  first run, with the helper   {t_cold:6.1f} s  (compile {t_cold - t_warm:.1f} s)")
    print(f"  first run, helper off        {t_alone:6.1f} s  (compile {t_alone - t_warm:.1f} s)")
    print(f"  later runs (cache filled)    {t_warm:6.1f} s")
    print(f"  install + first run          {t_install + t_cold:6.1f} s "
          f"(helper off: {t_install + t_alone:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
