"""The ``alphamill`` command line.

Each verb family lives in its own module and registers itself on the main group
(``register(main)``). User mistakes (:class:`~alphamill.errors.AlphamillError`) are printed
as one clear message on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

import click

from alphamill.config import redact_url
from alphamill.errors import AlphamillError

#: Modules under alphamill.cli that contribute commands, each with ``register(group)``.
COMMAND_MODULES = ("pool", "data", "features", "demo", "run", "online")


class AlphamillGroup(click.Group):
    """Turns user errors into a message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AlphamillError as e:
            click.echo(f"error: {redact_url(str(e))}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=AlphamillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-t", "--task-pool", "task_pool", default=None, help="Task pool name (Qlib's task_pool).")
@click.option("--url", default=None, envvar="ALPHAMILL_POOL_URL", help="Pool store URL (default: the embedded SQLite pool).")
@click.version_option(package_name="alphamill")
@click.pass_context
def main(ctx: click.Context, task_pool: str | None, url: str | None) -> None:
    """alphamill: generate, pool, train, collect and ensemble quant-research tasks."""
    ctx.ensure_object(dict)
    ctx.obj["task_pool"] = task_pool
    ctx.obj["url"] = url


for _name in COMMAND_MODULES:
    import_module(f"alphamill.cli.{_name}").register(main)
