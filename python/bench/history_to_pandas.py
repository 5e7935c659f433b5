"""How long 1 M history rows take to reach pandas through the Python API (not a test).

    python python/bench/history_to_pandas.py [--rows N] [--entities K] [--dir DIR]

The first run builds the data once with the API itself (N events of K counters, one history
row per event: ingest, normalize, build) into DIR (default ~/.cache/defacto-bench-history);
later runs reuse it. Then it times ``d.history("counter").execute()`` — the Rust query over
the Delta history table, the Arrow IPC hand-over and pyarrow's conversion to pandas — and
prints the time of each part. Build the module with ``maturin develop --release`` for the
numbers that count; a debug build is several times slower in the Rust part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from defacto import Defacto

DEFINITIONS = {
    "entities": {
        "counter": {
            "starts": "counting",
            "identity": {"key": {"match": "exact"}},
            "properties": {
                "key": {"type": "string"},
                "hits": {"type": "integer", "default": 0},
                "last_value": {"type": "number"},
                "label": {"type": "string"},
            },
            "states": {
                "counting": {
                    "when": {
                        "hit": {"effects": [
                            "create",
                            {"set": {"property": "key", "from": "event.key"}},
                            {"increment": {"property": "hits"}},
                            {"set": {"property": "last_value", "from": "event.value"}},
                            {"set": {"property": "label", "from": "event.label"}},
                        ]},
                    },
                },
            },
        },
    },
    "sources": {
        "meter": {
            "event_type": "type",
            "timestamp": "ts",
            "events": {
                "hit": {
                    "mappings": {
                        "key": {"from": "key"},
                        "value": {"from": "value", "type": "number"},
                        "label": {"from": "label"},
                        "n": {"from": "n", "type": "integer"},
                    },
                    "hints": {"counter": ["key"]},
                },
            },
        },
    },
}


def events(rows: int, entities: int):
    base = 1_704_067_200  # 2024-01-01T00:00:00Z
    for i in range(rows):
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i))
        yield {"type": "hit", "ts": ts, "key": f"k{i % entities:06d}", "value": i * 0.5,
               "label": f"label-{i % 97}", "n": i}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "defacto-bench-history")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    folder = args.dir / f"{args.rows}x{args.entities}"
    folder.mkdir(parents=True, exist_ok=True)
    doc = folder / "definitions.json"
    doc.write_text(json.dumps(DEFINITIONS))
    with Defacto(str(doc), database=f"sqlite://{folder / 'defacto.db'}",
                 cold_ledger=str(folder / "lake"), log_level="WARNING") as d:
        status = d.build_status()
        if status.total_events < args.rows:
            print(f"preparing {args.rows} events of {args.entities} counters in {folder} ...")
            start = time.perf_counter()
            batch = 250_000
            stream = events(args.rows, args.entities)
            done = status.total_events
            # resume where an interrupted preparation stopped (events are appended in order)
            for _ in range(done):
                next(stream)
            while done < args.rows:
                chunk = [e for _, e in zip(range(batch), stream)]
                d.ingest("meter", chunk)
                done += len(chunk)
                print(f"  ingested {done} events ({time.perf_counter() - start:.0f} s)")
            result = d.build()
            print(f"  build {result.mode}: {result.events_processed} events "
                  f"({time.perf_counter() - start:.0f} s in all)")

        table = d.history("counter")
        for attempt in range(1, args.repeat + 1):
            t0 = time.perf_counter()
            arrow = table.to_pyarrow()
            t1 = time.perf_counter()
            df = arrow.to_pandas()
            t2 = time.perf_counter()
            print(f"run {attempt}: {len(df)} history rows, {len(df.columns)} columns: "
                  f"Rust query + Arrow IPC {t1 - t0:.2f} s, to pandas {t2 - t1:.2f} s, "
                  f"total {t2 - t0:.2f} s")
            del arrow, df


if __name__ == "__main__":
    main()
