"""Online-store reads vs a bare redis-py + hiredis HGETALL of the same keys, and vs Feast.

Same Redis (``make up``), same run, same 12-feature vectors (``card_transactions.v1``):

* 1 entity: p50 and p99 latency of ``OnlineStore.read([id])`` (one ``HMGET key t d v``, staleness
  judged on read, one ``EntityFeatures`` of 12 ``FeatureValue``s built) vs one bare redis-py
  ``HGETALL`` of the same key.
* 64 entities: rows/s of ``OnlineStore.read(ids)`` (one round trip) vs a bare redis-py pipeline
  of 64 ``HGETALL``; and of ``OnlineStore.read_frame(ids)``, the same read column-wise (no
  ``FeatureValue`` per value: what inference uses).
* ``--feast``: Feast's ``get_online_features`` on the same Redis with the same features, in a
  throwaway venv (``.cache/feast-bench``, made with ``uv venv`` + ``uv pip install feast[redis]``;
  Feast needs pydantic 2, which the workspace cannot hold). Skipped unless asked for.

Ours and bare alternate call by call; Feast runs in its own process, in blocks between our
rounds, so all three sample the same stretch of machine noise (p99s on a busy 2-core box are
mostly that noise: compare them only within one run).

    .venv/bin/python bench/online_store.py [--iterations 3000] [--rounds 3] [--feast]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
from redis.utils import HIREDIS_AVAILABLE
from rich.console import Console
from rich.table import Table

from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.online import FeatureWrite, OnlineStore
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import unique_prefix

ROOT = Path(__file__).resolve().parents[1]
FEAST_VENV = ROOT / ".cache" / "feast-bench"
console = Console()
FS = TRANSACTION_FEATURES
BATCH = 64


def timed(call: Callable[[], object], iterations: int) -> np.ndarray:
    out = np.empty(iterations)
    for i in range(iterations):
        started = time.perf_counter_ns()
        call()
        out[i] = time.perf_counter_ns() - started
    return out / 1e3  # microseconds


def interleaved(
    first: Callable[[], object], second: Callable[[], object], iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Alternate the two calls one by one, so machine noise hits both alike."""
    a, b = np.empty(iterations), np.empty(iterations)
    clock = time.perf_counter_ns
    for i in range(iterations):
        started = clock()
        first()
        middle = clock()
        second()
        a[i], b[i] = middle - started, clock() - middle
    return a / 1e3, b / 1e3


def measure(
    store: OnlineStore,
    client: redis.Redis,
    ids: list[str],
    iterations: int,
    rounds: int,
    feast: FeastRunner | None = None,
) -> dict:
    keys = [store.key(e) for e in ids]
    one_key, one_id = keys[0], ids[0]

    def bare_one() -> object:
        return client.hgetall(one_key)

    def ours_one() -> object:
        return store.read([one_id])

    def bare_many() -> object:
        pipe = client.pipeline(transaction=False)
        for key in keys[:BATCH]:
            pipe.hgetall(key)
        return pipe.execute()

    def ours_many() -> object:
        return store.read(ids[:BATCH])

    def frame_many() -> object:  # the same read, column-wise: what inference uses
        return store.read_frame(ids[:BATCH])

    for call in (bare_one, ours_one, bare_many, ours_many, frame_many):
        timed(call, 200)  # warm-up: connections, script cache, branch predictors
    names = ("bare_one", "ours_one", "bare_many", "ours_many", "frame_many", "feast_one", "feast_many")
    samples: dict[str, list[np.ndarray]] = {k: [] for k in names}
    many_iterations = max(50, iterations // 10)
    for _ in range(rounds):
        bare, ours = interleaved(bare_one, ours_one, iterations)
        samples["bare_one"].append(bare)
        samples["ours_one"].append(ours)
        if feast is not None:  # about as long as the block above: it is ~8x slower per call
            samples["feast_one"].append(feast.run("one", max(100, iterations // 3)))
        ours, bare = interleaved(ours_many, bare_many, many_iterations)
        samples["bare_many"].append(bare)
        samples["ours_many"].append(ours)
        frames, bare = interleaved(frame_many, bare_many, many_iterations)
        samples["bare_many"].append(bare)
        samples["frame_many"].append(frames)
        if feast is not None:
            samples["feast_many"].append(feast.run("many", max(20, many_iterations // 3)))
    return {k: np.concatenate(v) for k, v in samples.items() if v}


FEAST_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, tempfile, pathlib
    from datetime import datetime, timedelta, timezone
    import numpy as np, pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64
    from feast.repo_config import RepoConfig, RegistryConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig

    args = json.loads(sys.argv[1])
    names, ids = args["names"], args["ids"]
    repo = pathlib.Path(tempfile.mkdtemp())
    now = datetime.now(timezone.utc)
    frame = pd.DataFrame({"card_id": ids, "event_timestamp": [now] * len(ids)})
    for i, name in enumerate(names):
        frame[name] = np.arange(len(ids), dtype=np.float64) + i
    frame.to_parquet(repo / "data.parquet")
    config = RepoConfig(
        project=args["project"],
        registry=RegistryConfig(path=str(repo / "registry.db")),
        provider="local",
        online_store=RedisOnlineStoreConfig(connection_string=args["connection"]),
        entity_key_serialization_version=3,
        repo_path=repo,
    )
    store = FeatureStore(config=config)
    card = Entity(name="card_id", join_keys=["card_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="card_transactions_v1",
        entities=[card],
        ttl=timedelta(minutes=10),
        schema=[Field(name=n, dtype=Float64) for n in names],
        source=FileSource(path=str(repo / "data.parquet"), timestamp_field="event_timestamp"),
        online=True,
    )
    store.apply([card, view])
    store.write_to_online_store("card_transactions_v1", frame)
    refs = [f"card_transactions_v1:{n}" for n in names]

    def timed(call, n):
        out = np.empty(n)
        for i in range(n):
            t = time.perf_counter_ns(); call(); out[i] = time.perf_counter_ns() - t
        return out / 1e3

    one = lambda: store.get_online_features(features=refs, entity_rows=[{"card_id": ids[0]}]).to_dict()
    many = lambda: store.get_online_features(
        features=refs, entity_rows=[{"card_id": e} for e in ids[:64]]).to_dict()
    got = one()
    assert got[names[0]][0] is not None, got
    timed(one, 100); timed(many, 20)
    import feast
    print(json.dumps({"version": feast.__version__}), flush=True)
    # Blocks on request, so the caller can interleave them with its own rounds: "one N", "many N".
    for line in sys.stdin:
        kind, n = line.split()
        print(json.dumps(timed(one if kind == "one" else many, int(n)).tolist()), flush=True)
    store.teardown()
    """
)


def feast_connection(url: str) -> str:
    parsed = redis.connection.parse_url(url)
    parts = [f"{parsed.get('host', '127.0.0.1')}:{parsed.get('port', 6379)}"]
    if parsed.get("username"):
        parts.append(f"username={parsed['username']}")
    if parsed.get("password"):
        parts.append(f"password={parsed['password']}")
    if parsed.get("db"):
        parts.append(f"db={parsed['db']}")
    return ",".join(parts)


class FeastRunner:
    """Feast in its own venv and process, timing blocks of calls on request."""

    def __init__(self, settings: RedisSettings, ids: list[str]) -> None:
        python = FEAST_VENV / "bin" / "python"
        if not python.exists():
            console.print(f"[yellow]creating the Feast venv in {FEAST_VENV} (once)...[/]")
            subprocess.run(
                ["uv", "venv", "--python", "3.11", str(FEAST_VENV)], check=True, capture_output=True
            )
            subprocess.run(
                ["uv", "pip", "install", "--python", str(python), "feast[redis]", "pandas>=2.2"],
                check=True,
                capture_output=True,
            )
        script = FEAST_VENV / "feast_bench.py"
        script.write_text(FEAST_SCRIPT)
        args = {
            "names": FS.feature_names,
            "ids": ids,
            "project": f"dlbench{unique_prefix().strip('.')}",
            "connection": feast_connection(settings.url),
        }
        self._proc = subprocess.Popen(
            [str(python), str(script), json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.version = str(json.loads(self._readline())["version"])

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            stderr = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"Feast run failed:\n{stderr[-3000:]}")
        return line

    def run(self, kind: str, iterations: int) -> np.ndarray:
        """Latencies (µs) of ``iterations`` calls: ``one`` entity or ``many`` (64)."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{kind} {iterations}\n")
        self._proc.stdin.flush()
        return np.array(json.loads(self._readline()))

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=3000, help="1-entity reads per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--feast", action="store_true", help="also measure Feast (throwaway venv)")
    args = parser.parse_args()

    settings = RedisSettings()
    client = redis.Redis.from_url(settings.url)
    parser_name = "hiredis" if HIREDIS_AVAILABLE else "pure Python"
    prefix = unique_prefix().rstrip(".")
    store = OnlineStore(client, FS, key_prefix=prefix)
    ids = [f"card-{i:04d}" for i in range(BATCH)]
    now = time.time()
    store.write_many(
        [
            FeatureWrite(e, now, [float(i + j) for j in range(len(FS.feature_names))])
            for i, e in enumerate(ids)
        ]
    )
    feast: FeastRunner | None = None
    try:
        if args.feast:
            try:
                feast = FeastRunner(settings, ids)
            except (RuntimeError, subprocess.CalledProcessError) as err:
                console.print(f"[red]{err}[/]")
        samples = measure(store, client, ids, args.iterations, args.rounds, feast)
    finally:
        if feast is not None:
            feast.close()
        store.delete(ids)
        store.close()

    def p(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q))

    def rows(values: np.ndarray) -> float:
        return float(BATCH / (np.median(values) / 1e6))  # rows/s at the median call

    table = Table(
        title=f"Online store reads, {len(FS.feature_names)} features (redis-py parser: {parser_name})"
    )
    for column in (
        "measure",
        "bare HGETALL",
        "OnlineStore",
        "ratio (ours / bare)",
        "Feast",
        "ratio (ours / Feast)",
    ):
        table.add_column(column, justify="right")
    lines: list[tuple[str, float, float, float | str | None]] = [
        (
            "1 entity p50 (µs)",
            p(samples["bare_one"], 50),
            p(samples["ours_one"], 50),
            None if feast is None else p(samples["feast_one"], 50),
        ),
        (
            "1 entity p99 (µs)",
            p(samples["bare_one"], 99),
            p(samples["ours_one"], 99),
            None if feast is None else p(samples["feast_one"], 99),
        ),
        (
            "64 entities p50 (µs)",
            p(samples["bare_many"], 50),
            p(samples["ours_many"], 50),
            None if feast is None else p(samples["feast_many"], 50),
        ),
        (
            "64 entities p99 (µs)",
            p(samples["bare_many"], 99),
            p(samples["ours_many"], 99),
            None if feast is None else p(samples["feast_many"], 99),
        ),
        (
            "64 entities rows/s",
            rows(samples["bare_many"]),
            rows(samples["ours_many"]),
            None if feast is None else rows(samples["feast_many"]),
        ),
        ("64 entities p50, read_frame (µs)", p(samples["bare_many"], 50), p(samples["frame_many"], 50), "-"),
        ("64 entities rows/s, read_frame", rows(samples["bare_many"]), rows(samples["frame_many"]), "-"),
    ]
    for name, bare, ours, other in lines:
        table.add_row(
            name,
            f"{bare:,.0f}",
            f"{ours:,.0f}",
            f"{ours / bare:.2f}x",
            "not run" if other is None else other if isinstance(other, str) else f"{other:,.0f}",
            "-" if other is None or isinstance(other, str) else f"{ours / other:.2f}x",
        )
    console.print(table)
    ours_p99 = p(samples["ours_one"], 99)
    verdict = f"targets: 1-entity p99 <= 3x bare (got {ours_p99 / p(samples['bare_one'], 99):.2f}x)"
    if feast is not None:
        feast_p99 = p(samples["feast_one"], 99)
        verdict += f"; <= 0.25x Feast {feast.version} p99 (got {ours_p99 / feast_p99:.3f}x)"
    else:
        verdict += "; Feast comparison not run (pass --feast)"
    console.print(verdict)


if __name__ == "__main__":
    main()
