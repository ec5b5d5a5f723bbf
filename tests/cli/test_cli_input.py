"""Data files as spreadsheets in many locales write them: ';'-separated with decimal commas."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mlmsim
from mlmsim.cli.common import read_table


@pytest.fixture(scope="module")
def pupils():
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 6)
    x = rng.normal(size=g.size)
    y = 1.0 + 0.5 * x + rng.normal(size=12)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"school": g, "score": y, "ses": x})


def test_semicolon_file_with_decimal_commas_fits_as_the_numbers(pupils, tmp_path):
    path = tmp_path / "pupils.csv"
    pupils.to_csv(path, sep=";", decimal=",", index=False, float_format="%.17g")
    assert "," in path.read_text().splitlines()[1]  # the numbers do carry decimal commas
    proc = subprocess.run([sys.executable, "-m", "mlmsim", "fit", str(path),
                           "score ~ ses + (1 | school)", "--ml", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "decimal commas" in proc.stderr and "'score'" in proc.stderr
    ref = mlmsim.fit("score ~ ses + (1 | school)", pupils, method="ML")
    out = json.loads(proc.stdout)
    assert out["minus2ll"] == pytest.approx(ref.deviance, rel=1e-12)


def test_text_column_with_commas_stays_text(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("school;score;name\n1;1,5;a,b\n1;2,5;c\n2;3,1;d\n2;2,2;e\n3;1,0;f\n")
    d = read_table(str(path))
    assert d["score"].tolist() == [1.5, 2.5, 3.1, 2.2, 1.0]
    assert d["name"].tolist() == ["a,b", "c", "d", "e", "f"]
