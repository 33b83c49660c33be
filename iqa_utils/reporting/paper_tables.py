"""The papers' tables that need more than `Session.compare`: reported | reproduced for data efficiency
and cost, and which version of each paper they quote."""
from __future__ import annotations

import pandas as pd

from ..config.check import make_config
from ..models import display_name
from . import tables


def paper_versions(profile: str, overrides: dict | None = None) -> dict[str, str]:
    """Which version of each paper the tables quote (csfiqa.version, lmliqa.version; docs D1): the
    profile's, or the one `overrides` (`iqa-kit reproduce --set csfiqa.version=v1`) sets."""
    return {display_name("csfiqa"): make_config(profile, "csfiqa", overrides).csfiqa.version,
            display_name("lmliqa"): make_config(profile, "lmliqa", overrides).lmliqa.version}


def data_efficiency_table(runs: pd.DataFrame, profile: str | None, versions: dict | None = None) -> pd.DataFrame:
    """Reported | reproduced per share of the training split (the fraction_configs rows), judged for
    `profile` (tables.comparison_table)."""
    parts = [tables.comparison_table(g, table=f"data_efficient_{share.rstrip('%')}", versions=versions,
                                     by=("method", "variant", "dataset"), profile=profile)
             for share, g in runs.groupby("variant", sort=False)]
    return pd.concat(parts, ignore_index=True)


def cost_vs_reported(cost: pd.DataFrame) -> pd.DataFrame:
    """Reported cost figures next to the kit's full-size counts (LoDa / TReS are reported-only)."""
    rep = tables.reported_numbers()
    rep = rep[rep.table == "cost"]
    full = cost[cost["size"] == "full (paper)"].set_index("model")
    rows = []
    for r in rep.itertuples():
        method = r.method.split(" (")[0]
        col = "params_M" if r.metric == "params_M" else "GMACs_per_crop"
        ours = float(full.loc[method, col]) if method in full.index else None
        rows.append({"method": r.method, "metric": r.metric, "reported": r.value,
                     "source": f"{r.paper} {r.version}: {r.provenance}",
                     "kit (full size)": ours, "delta": None if ours is None else ours - r.value})
    return pd.DataFrame(rows)
