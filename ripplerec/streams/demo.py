"""``ripplerec demo`` and ``ripplerec replay``: MovieLens-100K through the whole stream.

:func:`replay` publishes the catalog and the ratings (in timestamp order, paced to a rate) with
:class:`~ripplerec.producers.EventProducer`; event ids are derived from the rating's position, but
replaying twice counts most ratings again: the ingest agent drops a resent id only while it is among its
user's latest ``dedupe_recent_event_ids`` ids. :func:`run_demo` starts the
embedded broker and Redis, a worker subprocess (role ``all``: ingest, scorer and, serving the
transformer, the trainer), replays in a thread, and shows the stream learning: live progress, each
head version the trainer announces (with its own test-then-learn HR/NDCG@10 on the examples since the
previous one), and a few users' recommendations with the past behaviours that influenced them
(attention weight and leave-one-out delta). It stops once the stream has drained and a version trained
on all of it serves.

The first run encodes the catalog with the language model into the embedding cache on disk
(``.ripplerec/cache``, keyed by encoder version), before the worker needs it; later runs read it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ripplerec.config import Settings
from ripplerec.streams.local_stack import VersionWatch

__all__ = ["ReplayProgress", "replay", "run_demo", "publish_catalog", "catalog_records", "prepare_embeddings",
           "VersionWatch"]


@dataclass
class ReplayProgress:
    total: int = 0
    published: int = 0
    items: int = 0
    done: bool = False
    error: BaseException | None = None
    users: list[str] = field(default_factory=list)


def catalog_records(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataset items as the ``ItemUpsert`` fields :func:`publish_catalog` sends (cut to the default limits)."""
    return [
        {"item_id": item.item_id, "title": item.title[:1000], "text": item.text[:16000],
         "attributes": dict(item.attributes), "relations": [(r, t) for r, t in item.relations][:256]}
        for item in items
    ]


def publish_catalog(producer: Any, items: Sequence[Any]) -> int:
    """Publish every dataset item as an ``ItemUpsert`` (title, text, attributes, KG relations)."""
    for record in catalog_records(items):
        producer.publish_item(record["item_id"], record["title"], record["text"], record["attributes"],
                              record["relations"])
    producer.flush()
    return len(items)


def replay(
    producer: Any,
    interactions: Sequence[Any],
    *,
    rate: float,
    progress: ReplayProgress,
    stop: threading.Event,
    chunk: int = 200,
) -> None:
    """Publish ``interactions`` as events at about ``rate`` per second (0 or less: as fast as possible)."""
    started = time.monotonic()
    seen_users: set[str] = set()
    try:
        for start in range(0, len(interactions), chunk):
            if stop.is_set():
                break
            part = interactions[start : start + chunk]
            producer.track_many([
                {"user_id": x.user_id, "item_id": x.item_id, "action": x.action, "value": x.value,
                 "ts": int(x.ts * 1000), "event_id": f"ml100k-{start + n}"}
                for n, x in enumerate(part)
            ])
            for x in part:
                if x.user_id not in seen_users:
                    seen_users.add(x.user_id)
                    progress.users.append(x.user_id)
            progress.published += len(part)
            if rate > 0:
                ahead = progress.published / rate - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)
        producer.flush()
    except BaseException as exc:  # reported by the caller's loop
        progress.error = exc
    finally:
        progress.done = True


def load_dataset(path: str | Path | None, limit: int | None) -> Any:
    from ripplerec.datasets import load_movielens_100k

    data = load_movielens_100k(path)
    return data.head(limit) if limit else data


def run_replay(settings: Settings, *, rate: float, limit: int | None, dataset_path: Path | None,
               envelope: bool, catalog: bool, echo: Callable[[str], None] = print) -> ReplayProgress:
    """``ripplerec replay``: publish catalog and ratings to the configured cluster."""
    from ripplerec.producers import EventProducer

    data = load_dataset(dataset_path, limit)
    progress = ReplayProgress(total=len(data.interactions))
    with EventProducer(settings, envelope=envelope) as producer:
        if catalog:
            progress.items = publish_catalog(producer, data.items)
            echo(f"published {progress.items} items to {settings.topics.items}")
        stop = threading.Event()
        thread = threading.Thread(target=replay, args=(producer, data.interactions),
                                  kwargs={"rate": rate, "progress": progress, "stop": stop}, daemon=True)
        thread.start()
        try:
            last = 0.0
            while thread.is_alive():
                thread.join(0.5)
                if time.monotonic() - last > 2:
                    echo(f"{progress.published}/{progress.total} events published")
                    last = time.monotonic()
        except KeyboardInterrupt:
            stop.set()
            thread.join()
    if progress.error is not None:
        raise progress.error
    echo(f"published {progress.published} events to {settings.topics.events}")
    return progress


def prepare_embeddings(settings: Settings, records: Sequence[Mapping[str, Any]], console: Any) -> int:
    """Encode the catalog texts the cache lacks (a first run) into the cache the worker reads; how many.

    The worker would encode them itself when the items arrive; doing it here first shows progress,
    and the worker then finds every row on disk (``.ripplerec/cache`` under the working folder).
    """
    if settings.scorer != "transformer":
        return 0
    from ripplerec.streams.transformer_setup import build_encoder, catalog_texts, embedding_cache

    encoder = build_encoder(settings)
    cache = embedding_cache(settings)
    texts = catalog_texts(records)
    missing = len(texts) - cache.lookup(encoder, texts)
    where = cache.directory or "memory"
    if not missing:
        console.print(f"item embeddings: all {len(texts)} cached ({where}, {encoder.version})")
        return 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console.print(f"item embeddings: encoding {missing} of {len(texts)} items with {settings.model_name} "
                  f"(first run only: kept in {where})")
    with contextlib.suppress(ImportError):  # transformers' own bar while it reads the weights: ours follows
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    with Progress(TextColumn("[bold blue]encode"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("encode", total=missing)
        cache.encode(encoder, texts, batch=64, progress=lambda done, _: bar.update(task, completed=done))
    return missing


def _format_version(update: Mapping[str, Any]) -> str:
    m = update.get("metrics") or {}
    figures = ", ".join(f"{label} {m[key]:.3f}" for key, label in
                        (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("auc", "AUC")) if key in m)
    return (f"[magenta]model version {update['version']}[/]: {int(m.get('examples_seen', 0)):,} examples seen; "
            f"tested before learning its {int(m.get('examples', 0)):,} new ones: {figures or 'no figures'}")


def _served_by(version: str) -> str:
    if version.endswith("+cold-start"):
        return f"{version[: -len('+cold-start')]}, cold start: popular items"
    if version.startswith("heuristic"):
        return f"{version}: the heuristic, until the first head version is served"
    return version


def _format_rec(record: Mapping[str, Any], titles: dict[str, str], limit: int = 5, influences: int = 2) -> list[str]:
    """A recommendation's items (Rich markup), each with its strongest influences. The transformer's are
    the past behaviour's attention weight in the user vector and its leave-one-out delta (score with it
    minus score without it); the heuristic's, the behaviour's share of the recency-weighted history and
    its co-occurrence contribution."""
    from rich.markup import escape

    heuristic = record["model_version"].startswith("heuristic")
    weight, delta = ("recency share", "co-occurrence") if heuristic else ("attention", "leave-one-out")
    lines = []
    for n, item in enumerate(record["items"][:limit], 1):
        title = escape(titles.get(item["item_id"], item["item_id"]))
        lines.append(f"   {n}. {title}  \\[score {item['score']:.3f}]")
        because = "; ".join(
            f"{escape(titles.get(i['item_id'], i['item_id']))} ({i['action']}, {weight} {i['weight']:.2f}, "
            f"{delta} {i['delta']:+.3f})"
            for i in item["influences"][:influences]
        )
        if because:
            lines.append(f"        because of: {because}")
    return lines


def _trainer_caught_up(m: Mapping[str, float]) -> bool:
    """Whether the trainer took every training example ingest published, and a version holding them serves."""
    taken = sum(m.get(f"ripplerec_trainer_examples{kind}_total", 0.0)
                for kind in ("", "_duplicate", "_unknown_item", "_sampled_out"))
    published = m.get("ripplerec_training_examples_total", 0.0)
    seen = m.get("ripplerec_trainer_examples_seen", 0.0)
    return published > 0 and taken >= published and m.get("ripplerec_model_version_examples", 0.0) >= seen


def run_demo(
    *,
    rate: float = 2000.0,
    limit: int | None = 20_000,
    users_to_show: int = 3,
    show_every_s: float = 5.0,
    dataset_path: Path | None = None,
    envelope: bool = False,
    workdir: Path | None = None,
    settle_timeout_s: float = 90.0,
) -> int:
    """Everything embedded: broker, Redis, a worker (trainer included), MovieLens replay, live progress and
    the model's versions and recommendations as it learns. Returns an exit code."""
    import uuid

    from rich.console import Console

    from ripplerec.consumers import RecommendationClient
    from ripplerec.embedded import free_port
    from ripplerec.producers import EventProducer
    from ripplerec.streams.local_stack import stack_settings, start_embedded, wait_until_serving
    from ripplerec.streams.worker import WorkerProcess

    console = Console()
    console.print("[bold]ripplerec demo[/]: MovieLens-100K replayed through Kafka (Tansu) -> Faust -> Redis")
    data = load_dataset(dataset_path, limit)
    titles = {item.item_id: item.title for item in data.items}
    base = Settings()
    transformer = base.scorer == "transformer"
    if transformer:
        # versions every 2 s (5 s by default) so the demo shows a few while the replay runs
        base = base.model_copy(update={"trainer": base.trainer.model_copy(update={"publish_every_s": 2.0})})
        console.print(f"serving the transformer scorer ({base.model_name} item encoder); its head learns online "
                      "in the worker's trainer, and the heuristic answers until the first head version")
    else:
        console.print("serving the heuristic scorer (RIPPLEREC_SCORER=heuristic): nothing to train")
    prepare_embeddings(base, catalog_records(data.items), console)
    topics = base.topics
    stop = threading.Event()
    progress = ReplayProgress(total=len(data.interactions))
    with start_embedded(topics, workdir) as stack:
        settings = stack_settings(base, stack, app_id=f"ripplerec-demo-{uuid.uuid4().hex[:6]}", web_port=free_port(),
                                  instance_id="demo-worker-all-0",
                                  schema_registry_path=Path(stack.workdir or ".") / "schemas.json")
        log_path = Path(stack.workdir or ".") / "worker.log"
        console.print(f"broker {stack.bootstrap_servers}  redis {stack.redis_url}  "
                      f"metrics http://127.0.0.1:{settings.web_port}/metrics  worker log {log_path}")
        worker = WorkerProcess(settings, "all", log_path=str(log_path), loglevel="info").start()
        producer = EventProducer(settings, envelope=envelope)
        client = None
        watch = None
        thread = None
        try:
            progress.items = publish_catalog(producer, data.items)
            console.print(f"published {progress.items} movies to {topics.items}")
            client = RecommendationClient(settings)
            # Start the replay once the scorer answers: its consumer group must have joined first.
            not_serving = wait_until_serving(client, "ripplerec-demo-warmup", timeout_s=60.0)
            if not_serving is not None:
                console.print(f"[red]the scorer did not answer a warm-up request ({not_serving}); see {log_path}[/]")
                return 1
            watch = VersionWatch(settings) if transformer else None
            console.print("the scorer answers; replaying ratings")
            thread = threading.Thread(target=replay, args=(producer, data.interactions),
                                      kwargs={"rate": rate, "progress": progress, "stop": stop}, daemon=True)
            thread.start()
            shown = _Shown(client, titles, users_to_show)
            started = time.monotonic()
            last_show = started
            last_ingested, last_t, ev_rate = 0.0, started, 0.0
            last_metrics: dict[str, float] = {}
            drained_at: float | None = None
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = [
                TextColumn("[bold blue]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
            ]
            with Progress(*columns, console=console, refresh_per_second=4) as bar:
                task = bar.add_task("replay", total=progress.total, stats="starting the worker...")
                while True:
                    time.sleep(0.5)
                    if not worker.alive():
                        console.print(f"[red]the worker exited; see {log_path}[/]")
                        return 1
                    m = worker.read_metrics() or last_metrics  # a slow scrape keeps the last figures
                    last_metrics = m
                    ingested = m.get("ripplerec_events_ingested_total", 0.0)
                    handled = ingested + m.get("ripplerec_events_duplicate_total", 0.0) + \
                        m.get("ripplerec_dead_letters_total", 0.0)
                    now = time.monotonic()
                    if now - last_t >= 1.0:
                        ev_rate = (ingested - last_ingested) / (now - last_t)
                        last_ingested, last_t = ingested, now
                    lag = max(0, progress.published - int(handled))
                    trained = f"  trained {int(m.get('ripplerec_trainer_examples_seen', 0)):,}" if transformer else ""
                    bar.update(task, completed=int(handled), stats=(
                        f"{ev_rate:6.0f} ev/s  lag {lag:5d}  profiles {_count_profiles(settings):4d}{trained}  "
                        f"recs {int(m.get('ripplerec_recommendations_total', 0.0))}"))
                    if watch is not None:
                        for update in watch.poll():
                            bar.console.print(_format_version(update))
                    if now - last_show >= show_every_s and progress.users:
                        last_show = now
                        shown.show(progress.users[-users_to_show:], bar.console)
                    if progress.error is not None:
                        raise progress.error
                    if progress.done and lag == 0:
                        drained_at = drained_at or now
                        if not transformer or _trainer_caught_up(m):
                            break
                        if now - drained_at > settle_timeout_s:
                            bar.console.print(f"[yellow]the trainer has not caught up after {settle_timeout_s:.0f} s;"
                                              f" stopping anyway (see {log_path})[/]")
                            break
                        bar.update(task, stats="replayed; waiting for the trainer's last version to serve...")
            elapsed = time.monotonic() - started
            if watch is not None:
                for update in watch.poll():
                    console.print(_format_version(update))
            console.print("[bold]recommendations now[/] (the same users, by the latest version):")
            shown.show(shown.users or progress.users[-users_to_show:], console)
            m = worker.read_metrics(timeout=5.0) or last_metrics
            console.print(
                f"[bold]done[/] in {elapsed:.1f}s: {progress.published} events published, "
                f"{int(m.get('ripplerec_events_ingested_total', 0))} ingested, "
                f"{int(m.get('ripplerec_events_duplicate_total', 0))} duplicates, "
                f"{int(m.get('ripplerec_dead_letters_total', 0))} dead letters, "
                f"{_count_profiles(settings)} profiles, "
                f"{int(m.get('ripplerec_recommendations_total', 0))} recommendations served "
                f"({int(m.get('ripplerec_recommendations_total{kind=proactive}', 0))} proactive)"
            )
            if watch is not None:
                console.print(_learning_summary(watch.versions, m))
            return 0
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping the replay, the worker and the stack...[/]")
            return 130
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=10)
            if watch is not None:
                watch.close()
            if client is not None:
                client.close()
            producer.close()
            worker.stop()


class _Shown:
    """Asks for a few users' recommendations and prints them, with the version that served each."""

    def __init__(self, client: Any, titles: dict[str, str], count: int) -> None:
        self.client = client
        self.titles = titles
        self.count = count
        self.users: list[str] = []  # the users shown last

    def show(self, users: Sequence[str], console: Any) -> None:
        from ripplerec.consumers import RecommendationError, RecommendationTimeout

        self.users = list(users)
        for user in users:
            try:
                record = self.client.request(user, k=5, timeout=10.0)
            except (RecommendationTimeout, RecommendationError) as exc:
                console.print(f"[yellow]user {user}: {exc}[/]")
                continue
            console.print(f"[green]user {user}[/] (served by {_served_by(record['model_version'])}):")
            for line in _format_rec(record, self.titles, 3):
                console.print(line)


def _learning_summary(versions: Sequence[Mapping[str, Any]], m: Mapping[str, float]) -> str:
    """How the versions' own test-then-learn figures moved from the first to the last one."""
    if not versions:
        return "no head version was announced (see the worker log)"
    first, last = versions[0].get("metrics") or {}, versions[-1].get("metrics") or {}
    moved = ", ".join(f"{label} {first[key]:.3f} -> {last[key]:.3f}" for key, label in
                      (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10")) if key in first and key in last)
    return (f"the trainer announced {len(versions)} head versions ({int(m.get('ripplerec_trainer_examples_seen', 0)):,}"
            f" examples learned, {int(m.get('ripplerec_trainer_examples_sampled_out_total', 0)):,} sampled out); "
            f"the scorer loaded {int(m.get('ripplerec_model_versions_loaded_total', 0))}; "
            f"tested before learning, first -> last version: {moved or 'n/a'}")


def _count_profiles(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        return int(client.get(f"{settings.redis_key_prefix}:users") or 0)
    except redis.RedisError:
        return 0
    finally:
        client.close()
