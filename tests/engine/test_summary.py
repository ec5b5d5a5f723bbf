"""The text summary keeps its columns aligned whatever the length of the names."""

import re

import pytest

from mlmsim import datasets, fit


def _column_end(line: str, token: str) -> int:
    return line.index(token) + len(token)


@pytest.mark.parametrize("long", [False, True])
def test_columns_align_with_long_names(long):
    d = datasets.load("hsb")
    x, g = ("socioeconomic_status_of_the_student", "school_identifier_number") if long \
        else ("ses", "school")
    d = d.rename(columns={"ses": x, "school": g})
    res = fit(f"mathach ~ {x} + (1 + {x} | {g})", d, method="REML")
    lines = res.summary().splitlines()
    # random effects: the Variance column ends where its header ends, on every row
    head = next(i for i, s in enumerate(lines) if s.lstrip().startswith("Groups"))
    end = _column_end(lines[head], "Variance")
    rows = lines[head + 1:head + 4]  # Intercept, the slope, Residual
    assert len(rows) == 3
    for row in rows:
        numbers = list(re.finditer(r"-?\d+\.\d{4}", row))
        assert numbers and numbers[0].end() == end, (row, end)
    # fixed effects: the Estimate column likewise
    head = lines.index("Fixed effects:") + 1
    end = _column_end(lines[head], "Estimate")
    for row in lines[head + 1:head + 3]:
        first = re.search(r"-?\d+\.\d{4}", row)
        assert first is not None and first.end() == end, (row, end)
        assert row.split()[0] in ("Intercept", x)
