"""The trainer role's throughput: ripple.training messages -> test-then-learn -> versions and checkpoints.

    python bench/trainer.py                       # MovieLens-100K (recbole wheel), hashed text encoder
    python bench/trainer.py --events 20000 --encoder all-MiniLM-L6-v2 --threads 2

Builds, in process, the ``TrainingBatch`` messages the ingest agent would publish for the ratings in
timestamp order (``--batch`` events per message, each user's last 20 behaviours before the batch, 4
negatives per example), then feeds them to :class:`~ripplerec.streams.trainer.StreamTrainer`, the
code the trainer agent runs in its training thread: decode, dedupe, score every positive against the
whole catalog (HR/NDCG@10, AUC), one step of the served configuration (hybrid head, replay of 512)
per 256 examples. Reports examples/s (the catalog is added, and its texts encoded, before the clock
starts), and the time and size of one version and one checkpoint in a directory store. Compare the
examples/s with the ingest agent's events/s (``bench/ingest.py``): a trainer that learns slower than
ingest applies falls behind.
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from types import SimpleNamespace

import torch

from ripplerec.config import Settings, TrainerSettings
from ripplerec.datasets.movielens import load_movielens_100k
from ripplerec.models.store import DirectoryModelStore
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.training import batch_record
from ripplerec.streams.trainer import StreamTrainer, TrainingJob
from ripplerec.streams.transformer_setup import build_transformer


def messages(codec: AvroCodec, limit: int, batch: int, seed: int) -> tuple[list[SimpleNamespace], list, int]:
    """(TrainingBatch messages, the catalog's items, examples in them)."""
    data = load_movielens_100k()
    rng = random.Random(seed)
    events = sorted(data.interactions, key=lambda e: (e.ts, rng.random()))[:limit]
    ids = [item.item_id for item in data.items]
    history: dict[str, list[tuple[str, str, float | None, int]]] = {}
    out = []
    for offset, start in enumerate(range(0, len(events), batch)):
        chunk = events[start : start + batch]
        records = [{"event_id": f"e{start + i}", "user_id": e.user_id, "item_id": e.item_id, "action": e.action,
                    "value": e.value, "ts": int(e.ts * 1000), "context": {}} for i, e in enumerate(chunk)]
        users = sorted({e.user_id for e in chunk})
        histories = [(u, history.get(u, [])[-20:]) for u in users]
        for r in records:
            history.setdefault(r["user_id"], []).append((r["item_id"], r["action"], r["value"], r["ts"]))
        candidates = [rng.choice(ids) for _ in range(8 * len(records))]
        value = codec.encode("TrainingBatch", batch_record(records, histories, candidates, 4, 20))
        out.append(SimpleNamespace(topic="ripple.training", partition=0, offset=offset, key=None, value=value))
    return out, list(data.items), len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="ratings to train on (timestamp order)")
    parser.add_argument("--batch", type=int, default=2_000, help="events per TrainingBatch (the ingest batch)")
    parser.add_argument("--encoder", default="hashing", help="hashing, or a model (all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training thread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = AvroCodec()
    built, items, total = messages(codec, args.events, args.batch, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(model_name=args.encoder, trainer=TrainerSettings(store="directory", store_dir=folder))
        store = DirectoryModelStore(folder)
        scorer = build_transformer(settings)
        started = time.perf_counter()
        scorer.add_items(items)
        encoded = time.perf_counter() - started
        trainer = StreamTrainer(scorer, settings, codec, store)
        started = time.perf_counter()
        for seq, message in enumerate(built, 1):
            trainer.train(TrainingJob(seq, [message]))
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        record, _ = trainer.publish()
        published = time.perf_counter() - started
        started = time.perf_counter()
        trainer.checkpoint()
        checkpointed = time.perf_counter() - started
        digest = store.get_ref(f"checkpoint.{settings.trainer.model_name}") or ""
        checkpoint_bytes = len(store.get(digest))
    m = record["metrics"]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"encoder {args.encoder}")
    print(f"catalog: {len(items)} items added in {encoded:.1f}s")
    print(f"trained {int(m['examples_seen'])} of {total} events in {seconds:.1f}s: "
          f"{m['examples_seen'] / seconds:,.0f} examples/s ({len(built)} messages of {args.batch} events)")
    print(f"test-then-learn: HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  AUC {m['auc']:.4f}")
    print(f"version: {m['bytes'] / 1e6:.1f} MB in {published * 1000:.0f} ms; "
          f"checkpoint: {checkpoint_bytes / 1e6:.1f} MB in {checkpointed * 1000:.0f} ms")


if __name__ == "__main__":
    main()
