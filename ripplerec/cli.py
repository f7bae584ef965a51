"""The ``ripplerec`` command line. Heavy imports (torch, faust) happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["app", "main"]

app = typer.Typer(help="ripplerec: streaming, online-learning recommender.", no_args_is_help=True)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("eval", context_settings=_PASSTHROUGH, add_help_option=False)
def eval_(ctx: typer.Context) -> None:
    """Prequential evaluation of every model side by side (see `ripplerec eval --help`)."""
    from ripplerec.evaluation.cli import eval_app

    eval_app(args=list(ctx.args), prog_name="ripplerec eval")


@app.command()
def worker(
    role: str = typer.Option("all", help="ingest | scorer | trainer | monitor | all"),
    loglevel: str = typer.Option("warning", help="Faust/worker log level"),
    web: bool = typer.Option(True, help="Serve /metrics and /health on RIPPLEREC_WEB_PORT"),
) -> None:
    """Run a streaming worker configured from RIPPLEREC_* variables."""
    from ripplerec.config import get_settings
    from ripplerec.streams.app import ROLES
    from ripplerec.streams.worker import run_worker

    if role not in ROLES:
        raise typer.BadParameter(f"unknown role {role!r}; one of {', '.join(ROLES)}", param_hint="--role")
    run_worker(get_settings(), role, loglevel=loglevel, web=web)


@app.command()
def demo(
    rate: float = typer.Option(2000.0, help="Events per second to replay (0: as fast as possible)"),
    limit: int = typer.Option(20_000, help="How many ratings to replay (0: all 100,000)"),
    users: int = typer.Option(3, help="How many recent users to ask recommendations for"),
    every: float = typer.Option(5.0, help="Seconds between recommendation requests"),
    envelope: bool = typer.Option(False, help="Publish events as EventBatch envelopes"),
    dataset_path: Path | None = typer.Option(None, help="Folder with ml-100k.* (default: the recbole wheel)"),
) -> None:
    """Everything embedded: MovieLens-100K replayed through broker, worker and Redis, with live progress."""
    from ripplerec.streams.demo import run_demo

    raise typer.Exit(run_demo(rate=rate, limit=limit or None, users_to_show=users, show_every_s=every,
                              dataset_path=dataset_path, envelope=envelope))


@app.command()
def up(
    data: Path | None = typer.Option(None, "--data", help="Keep Redis's append-only file in this folder across "
                                     "runs (the broker is memory-only either way)"),
    web: bool = typer.Option(True, help="Serve /metrics, /health and the dashboard on RIPPLEREC_WEB_PORT "
                             "(0: any free port)"),
    every: float = typer.Option(2.0, help="Seconds between progress lines"),
    loglevel: str = typer.Option("info", help="The worker's log level (its log file is printed at start)"),
) -> None:
    """Start the embedded broker, Redis and a worker with every role, print the settings that point an app
    at them, and show live progress until Ctrl-C."""
    from ripplerec.config import get_settings
    from ripplerec.streams.up import run_up

    raise typer.Exit(run_up(get_settings(), data_dir=data, web=web, every_s=every, loglevel=loglevel))


@app.command()
def replay(
    rate: float = typer.Option(2000.0, help="Events per second (0: as fast as possible)"),
    limit: int = typer.Option(0, help="How many ratings to replay (0: all)"),
    envelope: bool = typer.Option(False, help="Publish events as EventBatch envelopes"),
    catalog: bool = typer.Option(True, help="Publish the movie catalog first"),
    dataset_path: Path | None = typer.Option(None, help="Folder with ml-100k.* (default: the recbole wheel)"),
) -> None:
    """Publish the MovieLens-100K catalog and ratings (timestamp order) to the configured cluster."""
    from ripplerec.config import get_settings
    from ripplerec.streams.demo import run_replay

    run_replay(get_settings(), rate=rate, limit=limit or None, dataset_path=dataset_path, envelope=envelope,
               catalog=catalog, echo=typer.echo)


@app.command()
def recommend(
    user: str = typer.Argument(..., help="User id"),
    k: int = typer.Option(10, "-k", help="How many items"),
    exclude: list[str] = typer.Option([], "--exclude", help="Item ids to leave out (repeatable)"),
    timeout: float = typer.Option(10.0, help="Seconds to wait for the reply"),
) -> None:
    """Ask the scorer once for USER's recommendations and print them."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from ripplerec.config import get_settings
    from ripplerec.consumers import RecommendationClient, RecommendationError, RecommendationTimeout

    settings = get_settings()
    try:
        with RecommendationClient(settings) as client:
            record = client.request(user, k=k, exclude=exclude, timeout=timeout)
    except (RecommendationTimeout, RecommendationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    titles: dict = {}
    try:
        from ripplerec.profiles.redis_store import RedisProfileStore

        async def lookup() -> dict:
            store = RedisProfileStore.from_settings(settings)
            try:
                return await store.get_items([i["item_id"] for i in record["items"]])
            finally:
                await store.close()

        titles = {k: v["title"] for k, v in asyncio.run(lookup()).items()}
    except Exception:  # titles are a nicety; the ids are the answer
        titles = {}
    table = Table(title=f"{user}: model {record['model_version']}")
    for column in ("#", "item", "title", "score", "because of"):
        table.add_column(column)
    for n, item in enumerate(record["items"], 1):
        because = ", ".join(f"{i['item_id']} ({i['action']}, {i['delta']:+.3f})" for i in item["influences"])
        table.add_row(str(n), item["item_id"], titles.get(item["item_id"], ""), f"{item['score']:.4f}", because)
    Console().print(table)


@app.command()
def forget(
    user: str = typer.Argument(..., help="User id (the raw one; see --pseudonym)"),
    pseudonym: bool = typer.Option(False, "--pseudonym", help="USER is already a pseudonym (p:...), use it as is"),
) -> None:
    """Delete every trace of USER that the workers keep (GDPR erasure).

    Removes the user's profile (history, counts, dedupe ids, training histories), consumed set and
    rate limit from Redis, and whatever every store registered in
    ripplerec.streams.forgetting.FORGETTERS keeps. With RIPPLEREC_PSEUDONYMIZE_KEY set, USER is
    hashed with the key first. Tombstones go to compacted topics keyed by user id; the default
    topics have none (ripple.items and ripple.model-updates are keyed by item and model), so past
    records on the other topics stay until their retention removes them.
    """
    from ripplerec.config import get_settings
    from ripplerec.streams.forgetting import forget_user

    settings = get_settings()
    report = forget_user(settings, user, pseudonym=pseudonym)
    for line in report.lines(settings.topics):
        typer.echo(line)


@app.command()
def explain(
    user: str = typer.Argument(..., help="User id (the raw one; see --pseudonym)"),
    item: str = typer.Argument(..., help="Item id"),
    k: int = typer.Option(100, "-k", help="How many items to ask the running stack for"),
    ask: bool = typer.Option(True, help="Ask the running stack first (--no-ask: only the model store and Redis)"),
    timeout: float = typer.Option(10.0, help="Seconds to wait for the running stack"),
    influences: int = typer.Option(10, help="How many influencing past behaviours to list"),
    pseudonym: bool = typer.Option(False, "--pseudonym", help="USER is already a pseudonym (p:...), use it as is"),
) -> None:
    """Why ITEM is (or is not) recommended to USER: score, rank and the past behaviours that influence it.

    Asks the running stack which version serves USER (and ITEM's place among the top K), then loads
    that head version from the model store, with the catalog and USER's profile from Redis, and prints
    ITEM's score, its rank among the items USER has not consumed, and each past behaviour's attention
    weight and leave-one-out delta (score with it minus score without it).
    """
    from rich.console import Console

    from ripplerec.config import get_settings
    from ripplerec.streams.explain import explain_item, render

    found = explain_item(get_settings(), user, item, ask=ask, k=k, timeout_s=timeout, pseudonym=pseudonym)
    console = Console()
    for part in render(found, limit=influences):
        console.print(part)
    if not found.known_item:
        raise typer.Exit(1)


@app.command()
def status(
    url: str | None = typer.Option(None, help="A worker's web server, e.g. http://127.0.0.1:6066 (default: "
                                   "RIPPLEREC_WEB_BIND/RIPPLEREC_WEB_PORT; none when the port is 0)"),
    timeout: float = typer.Option(5.0, help="Seconds to wait for each answer"),
    alerts: int = typer.Option(5, help="How many of the latest drift alerts to show"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Health, model versions, headline metrics and consumer lag: from a worker's /health and /metrics
    (when its URL is known) and from Redis and the topics (always). Exit status 1 when unhealthy."""
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from ripplerec.config import get_settings
    from ripplerec.streams.drift_tail import format_alert
    from ripplerec.streams.status import HEADLINE_METRICS, collect_status

    report = collect_status(get_settings(), url, timeout=timeout, alerts=alerts)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report), default=str, indent=2))
        raise typer.Exit(0 if report.ok else 1)
    console = Console()
    health = report.health or {}
    state = health.get("status") or ("ok" if report.ok else "unhealthy")
    console.print(f"[bold]status[/bold] {state}   redis {health.get('redis', report.redis)}   "
                  f"broker {health.get('broker', report.broker)}")
    if report.worker_url:
        where = report.worker_error or f"HTTP {report.health_status}"
        console.print(f"worker {report.worker_url}: {where}")
        for agent, note in (health.get("agents") or {}).items():
            console.print(f"  agent {agent}: {note}")
        for note in health.get("notes") or []:
            console.print(f"  note: {note}")
    else:
        console.print("worker: no URL (RIPPLEREC_WEB_PORT is 0: pass --url with the port it printed)")
    serving = health.get("model_version")
    latest = report.versions[0] if report.versions else None
    versions = f"serving {serving or '?'}"
    if latest is not None:
        shown = ("hr@10", "ndcg@10", "auc", "loss")
        figures = ", ".join(f"{k} {v:.4f}" for k, v in latest["metrics"].items() if k in shown)
        versions += f"; latest announced {latest['version']} ({latest.get('examples_seen') or 0} examples; {figures})"
    console.print(versions)
    if report.metrics:
        table = Table(title="headline metrics")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, caption in HEADLINE_METRICS.items():
            if name in report.metrics:
                table.add_row(caption, f"{report.metrics[name]:,.4g}")
        console.print(table)
    lag = health.get("consumer_lag") or report.lag
    for group, by_topic in lag.items():
        console.print(f"lag of group {group}: " + ", ".join(f"{t} {n:,}" for t, n in sorted(by_topic.items())))
    for alert in report.alerts:
        console.print("[red]drift[/red] " + format_alert(alert), markup=True, highlight=False)
    raise typer.Exit(0 if report.ok else 1)


drift_app = typer.Typer(help="Drift alerts on ripple.drift.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")


@drift_app.command("tail")
def drift_tail(
    last: int = typer.Option(10, "--last", "-n", help="Alerts already on the topic to print first (per partition)"),
    follow: bool = typer.Option(True, "--follow/--no-follow", "-f", help="Keep printing alerts as they come"),
) -> None:
    """Print drift alerts as they come (like kubectl logs -f); Ctrl-C stops."""
    from ripplerec.config import get_settings
    from ripplerec.streams.drift_tail import format_alert, tail_alerts

    try:
        for alert in tail_alerts(get_settings(), last=last, follow=follow):
            typer.echo(format_alert(alert))
    except KeyboardInterrupt:
        pass


@app.command()
def topics() -> None:
    """Create the topics of RIPPLEREC_TOPICS__* that do not exist yet, each with its partition count
    (ripple.training: one, so one worker trains) and report those whose count differs; run it once
    before the workers (they never create topics)."""
    from ripplerec.config import get_settings
    from ripplerec.streams.topics import ensure_topics

    settings = get_settings()
    report = ensure_topics(settings)
    for line in report.lines(settings.topics.training):
        typer.echo(line)
    if report.mismatched:
        raise typer.Exit(2)


_MODES = "head (encoder frozen) | lora (peft adapters on the encoder + head) | full (every encoder weight)"
_SNAPSHOT_DIR = typer.Option(Path("snapshots"), "--snapshots", help="The snapshot folders' root")


@app.command()
def finetune(
    mode: str = typer.Option("head", help=_MODES),
    max_minutes: float = typer.Option(5.0, help="Time budget; the best epoch so far is kept"),
    epochs: int = typer.Option(6, help="At most this many epochs over the replay buffer (early stopping)"),
    snapshots: Path = _SNAPSHOT_DIR,
    publish: bool = typer.Option(True, help="Announce a promoted head snapshot and have the trainer adopt it"),
    watch: bool = typer.Option(False, help="Keep running: fine-tune on the triggers below"),
    every_s: float = typer.Option(0.0, help="--watch: fine-tune every this many seconds (0: off)"),
    every_examples: int = typer.Option(0, help="--watch: after this many new trainer examples (0: off)"),
    on_drift: bool = typer.Option(True, help="--watch: on every DriftAlert on ripple.drift"),
    shadow_window: int = typer.Option(2_000, help="The gate: race the snapshot against the trainer's checkpoint "
                                      "on this many training examples after it; promoted when it ranks them better"),
    gate_wait_s: float = typer.Option(600.0, help="Wait at most this long for the shadow window's examples "
                                      "(an incomplete window promotes nothing)"),
) -> None:
    """Fine-tune a snapshot on the trainer's replay buffer; promote it when it beats the trainer's checkpoint
    on the training examples after that checkpoint (exit 3 when the gate failed)."""
    from ripplerec.config import get_settings
    from ripplerec.models.finetune import MODES
    from ripplerec.streams import snapshot_job

    if mode not in MODES:
        raise typer.BadParameter(f"one of {', '.join(MODES)}", param_hint="--mode")
    settings = get_settings()
    if watch:
        snapshot_job.watch(settings, mode, every_s=every_s, every_examples=every_examples, on_drift=on_drift,
                           max_minutes=max_minutes, snapshot_dir=snapshots, shadow_window=shadow_window,
                           gate_wait_s=gate_wait_s)
        return
    result = snapshot_job.run_finetune(settings, mode, max_minutes=max_minutes, epochs=epochs,
                                       snapshot_dir=snapshots, publish=publish, shadow_window=shadow_window,
                                       gate_wait_s=gate_wait_s)
    raise typer.Exit(0 if result["promoted"] else 3)


snapshot_app = typer.Typer(help="Fine-tune snapshots: list, promote, roll back.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("list")
def snapshot_list(snapshots: Path = _SNAPSHOT_DIR) -> None:
    """Every snapshot, oldest first; * marks the serving one."""
    from ripplerec.streams.snapshot_job import snapshot_lines

    for line in snapshot_lines(snapshots):
        typer.echo(line)


@snapshot_app.command("promote")
def snapshot_promote(
    version: str,
    snapshots: Path = _SNAPSHOT_DIR,
    force: bool = typer.Option(False, help="Promote even though it did not pass its gate"),
) -> None:
    """Serve snapshot VERSION (verified first; refused when it failed its gate unless --force)."""
    from ripplerec.config import get_settings
    from ripplerec.models.snapshots import SnapshotError
    from ripplerec.streams.snapshot_job import promote

    try:
        typer.echo(promote(get_settings(), version, snapshots, force=force))
    except SnapshotError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(2) from error


@snapshot_app.command("rollback")
def snapshot_rollback(snapshots: Path = _SNAPSHOT_DIR) -> None:
    """Serve the snapshot promoted before the current one again (its exact weights)."""
    from ripplerec.config import get_settings
    from ripplerec.models.snapshots import SnapshotError
    from ripplerec.streams.snapshot_job import rollback

    try:
        typer.echo(rollback(get_settings(), snapshots))
    except SnapshotError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(2) from error


def main() -> None:
    app()


if __name__ == "__main__":
    main()
