"""The ``ripplerec`` command line. Heavy imports (torch, faust) happen inside the commands."""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(help="ripplerec: streaming, online-learning recommender.", no_args_is_help=True)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("eval", context_settings=_PASSTHROUGH, add_help_option=False)
def eval_(ctx: typer.Context) -> None:
    """Prequential evaluation of every model side by side (see `ripplerec eval --help`)."""
    from ripplerec.evaluation.cli import eval_app

    eval_app(args=list(ctx.args), prog_name="ripplerec eval")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
