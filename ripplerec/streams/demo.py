"""``ripplerec demo`` and ``ripplerec replay``: MovieLens-100K through the whole stream.

:func:`replay` publishes the catalog and the ratings (in timestamp order, paced to a rate) with
:class:`~ripplerec.producers.EventProducer`; event ids are derived from the rating's position, but
replaying twice counts most ratings again: the ingest agent drops a resent id only while it is among its
user's latest ``dedupe_recent_event_ids`` ids. :func:`run_demo` starts the
embedded broker and Redis, a worker subprocess (role ``all``), replays in a thread, asks for a few
users' recommendations while it runs, and shows live progress until the stream has drained.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ripplerec.config import Settings

__all__ = ["ReplayProgress", "replay", "run_demo", "publish_catalog"]


@dataclass
class ReplayProgress:
    total: int = 0
    published: int = 0
    items: int = 0
    done: bool = False
    error: BaseException | None = None
    users: list[str] = field(default_factory=list)


def publish_catalog(producer: Any, items: Sequence[Any]) -> int:
    """Publish every dataset item as an ``ItemUpsert`` (title, text, attributes, KG relations)."""
    for item in items:
        producer.publish_item(
            item.item_id, item.title[:1000], item.text[:16000], dict(item.attributes),
            [(r, t) for r, t in item.relations][:256],
        )
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


def _format_rec(record: Mapping[str, Any], titles: dict[str, str], limit: int = 5) -> list[str]:
    lines = []
    for n, item in enumerate(record["items"][:limit], 1):
        because = ", ".join(
            f"{titles.get(i['item_id'], i['item_id'])} ({i['action']})" for i in item["influences"][:2]
        )
        title = titles.get(item["item_id"], item["item_id"])
        lines.append(f"   {n}. {title}  [{item['score']:.3f}]" + (f"  because: {because}" if because else ""))
    return lines


def run_demo(
    *,
    rate: float = 2000.0,
    limit: int | None = 20_000,
    users_to_show: int = 3,
    show_every_s: float = 5.0,
    dataset_path: Path | None = None,
    envelope: bool = False,
    workdir: Path | None = None,
) -> int:
    """Everything embedded: broker, Redis, a worker, MovieLens replay, live progress. Returns an exit code."""
    import uuid

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ripplerec.consumers import RecommendationClient, RecommendationError, RecommendationTimeout
    from ripplerec.embedded import EmbeddedStack, free_port
    from ripplerec.producers import EventProducer
    from ripplerec.streams.worker import WorkerProcess

    console = Console()
    console.print("[bold]ripplerec demo[/]: MovieLens-100K replayed through Kafka (Tansu) -> Faust -> Redis")
    data = load_dataset(dataset_path, limit)
    titles = {item.item_id: item.title for item in data.items}
    base = Settings()
    topics = base.topics
    stop = threading.Event()
    progress = ReplayProgress(total=len(data.interactions))
    worker: WorkerProcess | None = None
    with EmbeddedStack(topics=topics.all().values(), partitions=topics.partitions, compacted=topics.compacted(),
                       workdir=workdir) as stack:
        settings = base.model_copy(update={
            "bootstrap_servers": stack.bootstrap_servers,
            "redis_url": type(base.redis_url)(stack.redis_url),
            "app_id": f"ripplerec-demo-{uuid.uuid4().hex[:6]}",
            "rebalance_timeout_s": 2.0,
            "session_timeout_s": 4.0,
            "web_port": free_port(),
            "group_instance_id": "demo-worker-all-0",  # static membership: a restart takes its place at once
            "schema_registry_path": Path(stack.workdir or ".") / "schemas.json",
        })
        log_path = Path(stack.workdir or ".") / "worker.log"
        console.print(f"broker {stack.bootstrap_servers}  redis {stack.redis_url}  "
                      f"metrics http://127.0.0.1:{settings.web_port}/metrics  worker log {log_path}")
        worker = WorkerProcess(settings, "all", log_path=str(log_path), loglevel="info").start()
        producer = EventProducer(settings, envelope=envelope)
        client = None
        thread = None
        try:
            progress.items = publish_catalog(producer, data.items)
            console.print(f"published {progress.items} movies to {topics.items}")
            client = RecommendationClient(settings)
            # Start the replay once the scorer answers: its consumer group must have joined first.
            try:
                client.request("ripplerec-demo-warmup", k=1, timeout=60.0)
            except (RecommendationTimeout, RecommendationError) as exc:
                console.print(f"[red]the scorer did not answer a warm-up request ({exc}); see {log_path}[/]")
                return 1
            console.print("the scorer answers; replaying ratings")
            thread = threading.Thread(target=replay, args=(producer, data.interactions),
                                      kwargs={"rate": rate, "progress": progress, "stop": stop}, daemon=True)
            thread.start()
            served_requests = 0
            started = time.monotonic()
            last_show = started
            last_ingested, last_t, ev_rate = 0.0, started, 0.0
            last_metrics: dict[str, float] = {}
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
                    profiles = _count_profiles(settings)
                    recs = m.get("ripplerec_recommendations_total", 0.0)
                    bar.update(task, completed=int(handled), stats=(
                        f"{ev_rate:7.0f} ev/s  lag {lag:6d}  profiles {profiles:4d}  "
                        f"recs served {int(recs)} ({served_requests} asked here)"))
                    if now - last_show >= show_every_s and progress.users:
                        last_show = now
                        for user in progress.users[-users_to_show:]:
                            try:
                                record = client.request(user, k=5, timeout=10.0)
                            except (RecommendationTimeout, RecommendationError) as exc:
                                bar.console.print(f"[yellow]user {user}: {exc}[/]")
                                continue
                            served_requests += 1
                            kind = "cold start" if record["model_version"].endswith("cold-start") else \
                                record["model_version"]
                            bar.console.print(f"[green]user {user}[/] ({kind}):")
                            for line in _format_rec(record, titles, 3):
                                bar.console.print(line)
                    if progress.error is not None:
                        raise progress.error
                    if progress.done and lag == 0:
                        break
            elapsed = time.monotonic() - started
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
            return 0
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping the replay, the worker and the stack...[/]")
            return 130
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=10)
            if client is not None:
                client.close()
            producer.close()
            if worker is not None:
                worker.stop()


def _count_profiles(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        return int(client.get(f"{settings.redis_key_prefix}:users") or 0)
    except redis.RedisError:
        return 0
    finally:
        client.close()
