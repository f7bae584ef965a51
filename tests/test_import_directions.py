"""Dependencies point one way: client side without torch/faust, models without Kafka/Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ripplerec

PACKAGE = Path(ripplerec.__file__).parent


def _modules(subpackage: str) -> list[str]:
    """Every module of ``ripplerec.<subpackage>`` (``__main__`` excluded: importing it runs it)."""
    return [
        f"ripplerec.{subpackage}" + ("" if path.stem == "__init__" else f".{path.stem}")
        for path in sorted((PACKAGE / subpackage).glob("*.py"))
        if path.stem != "__main__"
    ]


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


def _offenders(modules: list[str], forbidden: list[str]) -> dict[str, list[str]]:
    """Which of ``modules`` load a ``forbidden`` one: all in one interpreter first (a union that loads
    none clears every module), then one interpreter per module to name the culprits."""
    if not _loaded_after("\n".join(f"import {m}" for m in modules), forbidden):
        return {}
    return {m: hit for m in modules if (hit := _loaded_after(f"import {m}", forbidden))}


def test_no_models_module_imports_the_streaming_side() -> None:
    """models/ is torch, transformers and river on plain data: no broker, no Redis, no worker, no eval."""
    modules = _modules("models")
    assert "ripplerec.models.zoo" in modules
    forbidden = ["faust", "aiokafka", "kafka", "redis", "ripplerec.streams", "ripplerec.evaluation"]
    assert _offenders(modules, forbidden) == {}


def test_no_streams_module_imports_the_evaluation() -> None:
    """The worker reads model configuration from models/ (``ripplerec.models.zoo``), never from the eval.

    The evaluation may import the worker (``eval --through-stream`` runs it), not the other way round.
    """
    modules = _modules("streams")
    assert "ripplerec.streams.transformer_setup" in modules
    assert _offenders(modules, ["ripplerec.evaluation"]) == {}


def test_the_direction_check_sees_a_violation() -> None:
    assert _offenders(["ripplerec.models.zoo", "ripplerec.evaluation.zoo"], ["ripplerec.evaluation"]) == {
        "ripplerec.evaluation.zoo": ["ripplerec.evaluation"]
    }


def test_each_client_module_imports_without_torch() -> None:
    modules = _modules("producers") + _modules("consumers")
    assert _offenders(modules, ["torch", "faust", "redis", "transformers"]) == {}


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


def test_only_the_monitor_role_loads_river() -> None:
    """river.drift imports scikit-learn (through river's datasets): 1.8 s of a worker's start that the
    ingest, scorer and trainer roles do not need."""
    statement = ("from ripplerec.config import Settings\nfrom ripplerec.streams.app import create_app\n"
                 "create_app(Settings(web_port=1, app_id='imports'), roles=['ingest'], web=False)")
    assert _loaded_after(statement, ["river", "sklearn", "torch"]) == []


def test_a_worker_of_every_role_starts_without_torch_or_river() -> None:
    """torch, the encoder's weights and river cost a worker of ``--role all`` about 4 s before it could
    join its consumer group, and so before its first event after a restart (``bench/recovery.py``): the
    trainer, the scorer's model and the monitor build them in their threads once the worker runs."""
    statement = ("from ripplerec.config import Settings\nfrom ripplerec.streams.app import create_app\n"
                 "create_app(Settings(web_port=1, app_id='imports', scorer='transformer'), roles=['all'], web=True)")
    assert _loaded_after(statement, ["river", "sklearn", "torch", "transformers"]) == []
