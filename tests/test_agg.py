"""`ms.agg`: mistakes in an aggregate's arguments, and aggregates that do not exist, say what was meant."""

from __future__ import annotations

import pytest

import microstream as ms


@pytest.mark.parametrize(("name", "meant"), [("avg", "mean"), ("stdd", "std"), ("average", "mean")])
def test_an_aggregate_that_does_not_exist_names_the_one_meant(name, meant):
    with pytest.raises(AttributeError, match=f"ms.agg has no aggregate '{name}'; did you mean ms.agg.{meant}\\?"):
        getattr(ms.agg, name)
    assert not hasattr(ms.agg, "__wrapped__")  # dunder look-ups stay plain AttributeErrors


@pytest.mark.parametrize("column", [3, ["co2"], ""])
def test_a_column_that_is_not_a_name_is_refused(column):
    with pytest.raises(ms.PipelineError, match="takes the name of a column") as err:
        ms.agg.mean(column)
    assert err.value.fix == "e.g. ms.agg.mean('co2')"


def test_a_negative_ddof_is_refused():
    with pytest.raises(ms.PipelineError, match="ddof must be a whole number >= 0, got -1"):
        ms.agg.var("co2", ddof=-1)
    assert ms.agg.std("co2", ddof=0).ddof == 0
