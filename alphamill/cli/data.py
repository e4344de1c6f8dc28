"""CLI verbs: ``alphamill data demo | info | to-qlib``."""

from __future__ import annotations

from pathlib import Path

import click

from alphamill.cli.common import parse_date
from alphamill.errors import ConfigError


@click.group("data")
def data_group() -> None:
    """Market data: generate the demo market, inspect or convert a data folder."""


@data_group.command("demo")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (must be empty or not exist).")
@click.option("--n", "n", default=300, show_default=True, type=click.IntRange(min=1, max=100_000),
              help="Number of instruments.")
@click.option("--start", default="2010-01-01", show_default=True, help="First calendar day.")
@click.option("--end", default="2020-12-31", show_default=True, help="Last calendar day.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
def demo_cmd(out: Path, n: int, start: str, end: str, seed: int) -> None:
    """Write the deterministic synthetic demo market (one CSV per instrument + meta.json)."""
    from alphamill.data.demo import generate_demo_market

    start, end = parse_date(start, "--start"), parse_date(end, "--end")
    if start > end:
        raise ConfigError(f"--start {start} is after --end {end}", "--start")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder", "--out")
    path = generate_demo_market(out, n=n, start=start, end=end, seed=seed)
    import json

    meta = json.loads((path / "meta.json").read_text())
    click.echo(
        f"wrote {n} instruments, {meta['n_calendar_days']} days, {meta['n_rows']} rows to {path} "
        f"({len(meta['late_listings'])} late listings, {len(meta['early_delistings'])} early "
        f"delistings, {sum(len(v) for v in meta['halts_rows_removed'].values())} halted days)"
    )


@data_group.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--spans", "show_spans", is_flag=True, help="List every instrument's listing spans.")
def info_cmd(path: Path, show_spans: bool) -> None:
    """Describe a data folder: kind, calendar range, instruments, spans, fingerprint."""
    from alphamill.data import open_data

    src = open_data(path)
    cal = src.calendar()
    spans = src.spans()
    click.echo(f"source:       {type(src).__name__} ({src.path})")
    click.echo(f"calendar:     {cal[0]:%Y-%m-%d} .. {cal[-1]:%Y-%m-%d} ({len(cal)} days)")
    click.echo(f"instruments:  {len(spans)}")
    firsts = sorted(r[0][0] for r in spans.values())
    lasts = sorted(r[-1][1] for r in spans.values())
    late = sum(1 for f in firsts if f > cal[0])
    early = sum(1 for x in lasts if x < cal[-1])
    multi = sum(1 for r in spans.values() if len(r) > 1)
    click.echo(f"spans:        {late} list after the first day, {early} end before the last day, "
               f"{multi} with several ranges")
    click.echo(f"fields:       {', '.join(src.available_fields())}")
    click.echo(f"fingerprint:  {src.fingerprint()}")
    if show_spans:
        for sym in sorted(spans):
            ranges = ", ".join(f"{a:%Y-%m-%d}..{b:%Y-%m-%d}" for a, b in spans[sym])
            click.echo(f"  {sym}\t{ranges}")


@data_group.command("to-qlib")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Qlib data folder to write (must be empty or not exist).")
def to_qlib_cmd(path: Path, out: Path) -> None:
    """Convert a data folder (e.g. CSV files) to Qlib's binary format, readable by Qlib."""
    from alphamill.data import open_data, write_qlib_bin

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder", "--out")
    src = open_data(path)
    write_qlib_bin(src, out)
    click.echo(f"wrote {len(src.spans())} instruments, {len(src.calendar())} days to {out}")


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(data_group)
