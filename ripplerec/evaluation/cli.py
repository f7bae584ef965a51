"""``ripplerec eval``: every model side by side under the prequential protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

__all__ = ["eval_app"]

eval_app = typer.Typer(add_completion=False, help="Prequential (test-then-learn) evaluation of every model.")


@eval_app.command()
def evaluate(
    dataset: str = typer.Option("ml-100k", help="ml-100k, or synthetic (planted preferences, for a quick look)"),
    every: int = typer.Option(10, min=1, help="evaluate every n-th event; every event is learned"),
    batch_size: int = typer.Option(256, min=1, help="events per learning batch (evaluated before it)"),
    models: str = typer.Option("all", help="comma-separated model names, or 'all'"),
    encoder: str = typer.Option("all-MiniLM-L6-v2", help="checkpoint alias or local path, or 'hashing'"),
    cache_dir: Path = typer.Option(Path(".ripplerec/cache"), help="item embedding cache"),
    out: Path | None = typer.Option(None, help="output folder (default runs/eval-<timestamp>)"),
    limit: int = typer.Option(0, min=0, help="only the first N events (0: all)"),
    data_dir: Path | None = typer.Option(None, help="folder with ml-100k.* (default: the recbole wheel)"),
    kg_neighbours: int = typer.Option(
        0, min=0, help="knowledge-graph neighbours per relation in item text (recbole's links are noise: 0)"
    ),
    history_length: int = typer.Option(50, min=1, help="behaviours in a user state"),
    dim: int = typer.Option(64, min=1, help="head dimension"),
    lr: float = typer.Option(3e-3, min=0.0, help="head learning rate"),
    steps_per_batch: int = typer.Option(1, min=1, help="optimizer steps per learning batch"),
    replay: int = typer.Option(512, min=0, help="past examples replayed in each training step of the head"),
    active_negatives: bool = typer.Option(
        True, help="transformer and id-only: negatives only among items that have had an interaction"
    ),
    id_gate: float = typer.Option(
        2.0, min=0.0, help="transformer: scale an item's id embedding by n/(n+this), n its interactions (0: off)"
    ),
    bias_gate: bool = typer.Option(False, help="transformer: scale item biases by the same factor as the id gate"),
    text_affinity: bool = typer.Option(
        True, help="transformer: add a learned multiple of cos(item text, user's history text)"
    ),
    count_features: bool = typer.Option(
        True, help="transformer and id-only: add co-occurrence and transition counts with learned weights"
    ),
    text_feature: bool = typer.Option(
        True, help="transformer, with --count-features: add the cosine of item text with recent items' texts"
    ),
    threads: int = typer.Option(
        0, min=0, help="torch CPU threads (0: leave torch's default); --through-stream: the workers' too"
    ),
    seed: int = typer.Option(0, help="seed of every model"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    through_stream: bool = typer.Option(
        False, "--through-stream",
        help="run the protocol through an embedded broker + Redis and the ingest, trainer and scorer roles (the "
        "served transformer, learning only from the stream); the model options above do not apply",
    ),
    rate: float = typer.Option(200.0, min=0.0, help="--through-stream: events/s replayed (0: as fast as it goes)"),
    publish_every_s: float = typer.Option(
        1.0, min=0.01, help="--through-stream: the trainer's version cadence (RIPPLEREC_TRAINER__PUBLISH_EVERY_S)"
    ),
    full_ranking: bool = typer.Option(
        False, help="--through-stream: ask for the whole catalog (default: the top k+1, which decides HR/NDCG@10 "
        "exactly)"
    ),
    in_process: bool = typer.Option(
        True, help="--through-stream: also run the served model in-process on the same events, for the ratio"
    ),
    reorder_window: int = typer.Option(
        100, min=1, help="--through-stream: how far other users' events may run ahead of a user waiting for its "
        "reply (1: strictly in stream order)"
    ),
    scenario: str = typer.Option(
        "prequential", help="prequential, or shift: phase A, then B, then A again; NDCG@10 on A's held-out "
        "events after B for the online head alone, + replay, + replay + head / LoRA snapshots (shift.md, shift.png)"
    ),
    variants: str = typer.Option("all", help="--scenario shift: comma-separated variants, or 'all'"),
    snapshot_every: int = typer.Option(10_000, min=1, help="--scenario shift: events between snapshots"),
    shadow_window: int = typer.Option(
        2_000, min=1, help="--scenario shift: events a snapshot is raced on against the serving model before it "
        "may serve"
    ),
    anchor_l2: float = typer.Option(
        -1.0, help="--scenario shift: the pull of the online head toward the last snapshot raced on (snapshot "
        "variants; negative: the trainer's default, 1e-5)"
    ),
    shadow_margin: float = typer.Option(
        0.0, min=0.0, help="--scenario shift: how much a snapshot's NDCG@10 must exceed the serving model's in its race"
    ),
) -> None:
    """Run the prequential protocol and write result.json, results.md and rolling_ndcg.png."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ripplerec.datasets.base import Dataset, DatasetNotFoundError
    from ripplerec.evaluation.prequential import PrequentialConfig, prequential
    from ripplerec.evaluation.report import markdown_table, write_report
    from ripplerec.models.zoo import MODEL_NAMES, ZooConfig, build_models

    console = Console(stderr=True)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if scenario == "shift":
        from ripplerec.evaluation.shift import VARIANTS, run_shift

        chosen = VARIANTS if variants == "all" else tuple(v.strip() for v in variants.split(",") if v.strip())
        run_shift(dataset, out or Path(f"runs/shift-{time.strftime('%Y%m%d-%H%M%S')}"), variants=chosen, seed=seed,
                  limit=limit, snapshot_every=snapshot_every, shadow_window=shadow_window, encoder_name=encoder,
                  data_dir=data_dir, anchor_l2=anchor_l2 if anchor_l2 >= 0 else None, shadow_margin=shadow_margin,
                  say=lambda line: console.print(line, markup=False, highlight=False))
        return
    if scenario != "prequential":
        raise typer.BadParameter(f"unknown scenario {scenario!r} (prequential or shift)", param_hint="--scenario")
    names = list(MODEL_NAMES) if models == "all" else [name.strip() for name in models.split(",") if name.strip()]
    data: Dataset
    try:
        if dataset == "ml-100k":
            from ripplerec.datasets.movielens import load_movielens_100k

            data = load_movielens_100k(data_dir, neighbours_per_relation=kg_neighbours)
        elif dataset == "synthetic":
            from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream

            data = synthetic_stream(SyntheticConfig(n_users=500, n_items=2000, n_events=50_000, seed=seed))
        else:
            raise typer.BadParameter(f"unknown dataset {dataset!r} (ml-100k or synthetic)")
    except DatasetNotFoundError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    if limit:
        data = data.head(limit)
    if through_stream:
        _through_stream(data, console, every=every, rate=rate, publish_every_s=publish_every_s,
                        full_ranking=full_ranking, encoder=encoder, history_length=history_length,
                        in_process=in_process, limit=limit, out=out, reorder_window=reorder_window, threads=threads)
        return
    try:
        zoo = ZooConfig(
            encoder=encoder,
            cache_dir=cache_dir,
            dim=dim,
            history_length=history_length,
            seed=seed,
            lr=lr,
            steps_per_batch=steps_per_batch,
            replay=replay,
            active_negatives=active_negatives,
            id_gate=id_gate,
            bias_gate=bias_gate,
            text_affinity=text_affinity,
            count_features=count_features,
            text_feature=text_feature,
        )
        built = build_models(names, zoo)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    config = PrequentialConfig(every=every, batch_size=batch_size, history_length=history_length)
    folder = out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    console.print(
        f"{data.name}: {len(data.items):,} items, {len(data.interactions):,} events; models: {', '.join(names)}"
    )
    with Progress(
        TextColumn("[bold]prequential"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    ) as bar:
        task = bar.add_task("events", total=len(data.interactions))
        result = prequential(built, data, config, progress=lambda n: bar.advance(task, n))
    paths = write_report(result, folder)
    typer.echo(markdown_table(result))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


def _through_stream(data: Any, console: Any, *, every: int, rate: float, publish_every_s: float, full_ranking: bool,
                    encoder: str, history_length: int, in_process: bool, limit: int, out: Path | None,
                    reorder_window: int, threads: int) -> None:
    import signal
    import sys

    from ripplerec.evaluation.through_stream import (
        ThroughStreamConfig,
        in_process_command,
        in_process_metrics,
        markdown_report,
        through_stream,
        write_result,
    )

    config = ThroughStreamConfig(every=every, rate=rate, publish_every_s=publish_every_s, full_ranking=full_ranking,
                                 model=encoder, history_length=history_length, reorder_window=reorder_window,
                                 threads=threads)
    # SIGTERM unwinds like Ctrl-C, so the worker processes (sessions of their own) are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    folder = out or Path("runs") / time.strftime("eval-stream-%Y%m%d-%H%M%S")
    console.print(f"{data.name}: {len(data.items):,} items, {len(data.interactions):,} events, through the stream "
                  f"(logs: {folder / 'workers.log'})")
    result = through_stream(data, config, workdir=folder, progress=lambda line: console.print(line))
    result.in_process_command = in_process_command(data.name, config, limit)
    if in_process:
        console.print(f"the same model in-process ({result.in_process_command})")
        result.in_process = in_process_metrics(data, config)
    paths = write_result(result, folder)
    typer.echo(markdown_report(result))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


if __name__ == "__main__":
    eval_app()
