"""CLI verb ``alphamill features``: export Alpha158 + label to a Parquet file."""

from __future__ import annotations

from pathlib import Path

import click

from alphamill.cli.common import parse_date
from alphamill.errors import ConfigError


@click.command("features")
@click.option("--data", "data", required=True, help="Data folder: per-instrument CSV/Parquet files or Qlib data.")
@click.option("--universe", default="all", show_default=True,
              help="'all', a market name, an instruments file (SYMBOL<TAB>start<TAB>end) or symbols A,B,C.")
@click.option("--start", default=None, help="First date to export (features still use earlier history).")
@click.option("--end", default=None, help="Last date to export (the label still looks ahead).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write.")
@click.option("--horizon", default=None, type=int,
              help="Label horizon h: Ref($close, -(h+1))/Ref($close, -1) - 1 (default 1 = Qlib's LABEL0).")
@click.option("--cache-dir", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache folder (default: the cache_dir setting).")
def features_cmd(data: str, universe: str, start: str | None, end: str | None, out: Path,
                 horizon: int | None, cache_dir: Path | None) -> None:
    """Export the 158 Alpha158 features and LABEL0 (Qlib's names and order), indexed by
    (datetime, instrument), for use in your own notebooks."""
    from alphamill.features.alpha158 import label_config
    from alphamill.features.cache import load_features

    start, end = parse_date(start, "--start"), parse_date(end, "--end")
    if start and end and start > end:
        raise ConfigError(f"--start {start} is after --end {end}", "--start")
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"expected a .parquet file name, got {out}", "--out")
    if not out.parent.exists():
        raise ConfigError(f"folder {out.parent} does not exist", "--out")
    spec: str | list[str] = universe
    if "," in universe:
        spec = [s.strip() for s in universe.split(",") if s.strip()]
    label = None
    if horizon is not None:
        label = label_config(None, horizon)
    df = load_features(data, instruments=spec, start=start, end=end, label=label, cache_dir=cache_dir)
    if df.empty:
        from alphamill.data import open_data

        cal = open_data(data).calendar()
        raise ConfigError(
            f"no rows between {start or 'the start'} and {end or 'the end'} for universe "
            f"{universe!r}; the data covers {cal[0]:%Y-%m-%d}..{cal[-1]:%Y-%m-%d}; nothing written",
            "--start/--end",
        )
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_parquet(tmp, engine="pyarrow")
    tmp.replace(out)
    n_inst = df.index.get_level_values("instrument").nunique() if len(df) else 0
    days = df.index.get_level_values("datetime")
    span = f"{days.min():%Y-%m-%d}..{days.max():%Y-%m-%d}" if len(df) else "no rows"
    click.echo(f"wrote {len(df)} rows x {df.shape[1]} columns ({n_inst} instruments, {span}) to {out}")


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(features_cmd)
