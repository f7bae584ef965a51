"""Dependencies point one way: client side without torch/faust, models without Kafka/Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(statement: str, forbidden: list[str]) -> list[str]:
    code = (
        f"import sys\n{statement}\n"
        f"hit = [m for m in {forbidden!r} if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)]\n"
        "print(','.join(hit))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


@pytest.mark.parametrize(
    "statement",
    [
        "import ripplerec",
        "import ripplerec.schemas, ripplerec.config",
        "from ripplerec import Settings",
    ],
)
def test_client_side_imports_without_heavy_dependencies(statement: str) -> None:
    assert _loaded_after(statement, ["torch", "faust", "redis", "transformers", "aiokafka"]) == []


def test_producers_and_consumers_import_without_torch() -> None:
    assert _loaded_after(
        "import ripplerec.producers, ripplerec.consumers", ["torch", "faust", "redis", "transformers"]
    ) == []


def test_producers_stay_on_kafka_python() -> None:
    """The producing side is thin and synchronous (DESIGN.md); only the request/reply client uses aiokafka."""
    assert _loaded_after("import ripplerec.producers", ["aiokafka", "torch", "faust", "redis"]) == []


def test_models_do_not_import_kafka_or_redis() -> None:
    assert _loaded_after(
        "import ripplerec.models, ripplerec.models.base",
        ["faust", "aiokafka", "kafka", "redis", "ripplerec.streams"],
    ) == []


def test_client_side_works_where_the_worker_dependencies_are_absent() -> None:
    """Like a base install: torch, faust, redis, transformers and numpy cannot be imported."""
    code = "\n".join(
        [
            "import sys",
            "for name in ('torch', 'faust', 'redis', 'transformers', 'numpy', 'river', 'peft'):",
            "    sys.modules[name] = None  # makes `import name` raise ImportError",
            "import ripplerec",
            "from ripplerec import EventProducer, RecommendationClient, RecommendationConsumer, Settings",
            "from ripplerec.producers import RecordValidator, UnknownActionError",
            "from ripplerec.schemas import AvroCodec",
            "validator = RecordValidator(Settings().limits)",
            "record = validator.behavior_event('e1', 'u1', 'i1', 'click', None, 1_700_000_000_000, None,",
            "                                  1_700_000_000_000)",
            "codec = AvroCodec()",
            "assert codec.decode('BehaviorEvent', codec.encode('BehaviorEvent', record)) == record",
            "try:",
            "    validator.behavior_event('e2', 'u1', 'i1', 'teleport', None, 1, None, 2)",
            "except UnknownActionError:",
            "    pass",
            "else:",
            "    raise SystemExit('unknown action accepted')",
            "print('ok')",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
