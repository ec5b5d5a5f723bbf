"""The registered method studies: the quick versions of bias and maas_hox run end to end.

(The hessian, centering and seed_tables studies have their own test files.)
"""

from __future__ import annotations

import pandas as pd
import pytest

from mlmsim import studies
from mlmsim.studies import RunOptions


def test_registry_lists_the_five_studies():
    assert studies.names() == ["bias", "maas_hox", "hessian", "centering", "seed_tables"]
    for name in studies.names():
        module = studies.get(name)
        assert module.TITLE and callable(module.run) and callable(module.report)
    with pytest.raises(ValueError, match="unknown study"):
        studies.get("nope")


@pytest.mark.parametrize("name", ["bias", "maas_hox"])
def test_quick_study_writes_its_report(name, tmp_path):
    module = studies.get(name)
    module.run(tmp_path, RunOptions(quick=True, progress=False))
    text = (tmp_path / "report.md").read_text()
    assert text.startswith(f"# {module.TITLE}")
    assert "singular" in text and "failed" in text
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.csv"))
    # the report is rebuilt from the saved records alone
    (tmp_path / "report.md").unlink()
    module.report(tmp_path)
    assert (tmp_path / "report.md").read_text() == text


def test_bias_untruncated_ml_matches_anova():
    from mlmsim.studies.bias import untruncated_ml

    g = [0, 0, 1, 1, 2, 2]
    y = [1.0, 3.0, 2.0, 2.0, 5.0, 7.0]
    est = untruncated_ml(pd.DataFrame({"g": g, "y": y}))
    # group means 2, 2, 6; grand mean 10/3; SSB = 2 * sum((m - 10/3)^2); MSW = 4 / 3
    ssb = 2 * ((2 - 10 / 3) ** 2 * 2 + (6 - 10 / 3) ** 2)
    assert est["sigma2"] == pytest.approx(4 / 3)
    assert est["var(Intercept)"] == pytest.approx((ssb / 3 - 4 / 3) / 2)


def test_maas_hox_truth():
    from mlmsim.studies.maas_hox import spec

    truth = spec({"icc": 0.2}).truth.params
    assert truth["var(Intercept)"] == pytest.approx(0.2 * 0.5 / 0.8)
    assert truth["var(X)"] == truth["var(Intercept)"] and truth["cov(X,Intercept)"] == 0
    assert truth["sigma2"] == 0.5 and truth["X:Z"] == 0.3
