import os
import stat

import numpy as np
import pandas as pd

from alphamill.report import write_html_report


def test_report_is_one_readable_file_with_both_charts(tmp_path):
    days = pd.bdate_range("2020-01-01", periods=30)
    ic = pd.DataFrame({"IC": np.linspace(-0.1, 0.1, 30), "Rank IC": np.linspace(0.1, -0.1, 30)}, index=days)
    excess = pd.DataFrame({"with cost": np.full(30, 0.001), "without cost": np.full(30, 0.002)}, index=days)
    table = pd.DataFrame({"IC": [0.05]}, index=["merged"])
    path = write_html_report(tmp_path / "sub" / "r.html", title="T <&>", summary=table, windows=table,
                             daily_ic=ic, excess_return=excess, backtest_summary=table)
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert "T &lt;&amp;&gt;" in text  # the title is escaped
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044  # readable by others (umask permitting)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".report-")]  # no temp left
