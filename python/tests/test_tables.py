"""DefactoTable and TableCollection: SQL composition, Arrow, exports."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from defacto import Defacto, DefactoTable, TableCollection


@pytest.fixture
def d(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        yield d


def test_filter_select_order_by_compose_sql(d):
    t = d.history("customer").filter("mrr > 50").select("email", "mrr").order_by("email")
    assert isinstance(t, DefactoTable)
    sql = t.sql()
    assert sql.startswith('SELECT email, mrr FROM (SELECT * FROM "customer_history" WHERE TRUE)')
    assert "WHERE (mrr > 50)" in sql and sql.endswith("ORDER BY email")
    df = t.execute()
    assert list(df.columns) == ["email", "mrr"]
    assert df.to_dict("records") == [{"email": "alice@example.com", "mrr": 99.0}]

    grouped = d.query("SELECT customer_state, count(*) AS n FROM customer "
                      "GROUP BY customer_state ORDER BY customer_state").execute()
    assert grouped.to_dict("records") == [{"customer_state": "active", "n": 1},
                                          {"customer_state": "churned", "n": 1}]


def test_mutate_adds_computed_columns(d):
    df = (d.table("customer").mutate(arr="mrr * 12").filter("arr > 0")
          .select("email", "arr").execute())
    assert df.to_dict("records") == [{"email": "alice@example.com", "arr": 1188.0}]
    wide = d.table("customer").mutate(arr="mrr * 12").execute()
    assert "arr" in wide.columns and "customer_id" in wide.columns


def test_steps_apply_in_the_order_written(d):
    history = d.history("customer")
    # the first two rows by valid_from, then only those with mrr > 0
    first_two = history.order_by("valid_from").limit(2).filter("mrr > 0")
    assert len(first_two.execute()) == 0
    # rows with mrr > 0, then the first two of them
    assert len(history.filter("mrr > 0").order_by("valid_from").limit(2).execute()) == 1
    assert history.limit(3).limit(5).execute().shape[0] == 3
    renamed = history.select("email AS who").filter("who LIKE 'bob%'").execute()
    assert list(renamed["who"]) == ["bob@example.com", "bob@example.com"]
    with pytest.raises(Exception, match="goes before"):
        history.select("email").filter("TRUE").as_of("2024-01-15")


def test_methods_return_new_tables(d):
    base = d.table("customer")
    filtered = base.filter("customer_state = 'active'")
    assert len(base.execute()) == 2
    assert len(filtered.execute()) == 1
    assert len(filtered.limit(0).execute()) == 0


def test_plain_sql_matches_the_table_command(d):
    t = d.table("customer")
    via_table = t.to_records()
    via_sql = d.query(t.sql()).to_records()
    assert via_table == via_sql
    at = d.history("customer").as_of("2024-01-15")
    assert at.to_records() == d.query(at.sql()).to_records()


def test_pyarrow_types(d):
    table = d.history("customer").to_pyarrow()
    assert isinstance(table, pa.Table)
    schema = table.schema
    assert pa.types.is_timestamp(schema.field("valid_from").type)
    assert pa.types.is_floating(schema.field("mrr").type)
    email = schema.field("email").type
    assert pa.types.is_string(email) or pa.types.is_string_view(email)


def test_parquet_and_csv(d, tmp_path):
    path = d.history("customer").to_parquet(tmp_path / "out" / "customer.parquet")
    assert pq.read_table(path).num_rows == 4
    path = d.history("customer").to_csv(tmp_path / "customer.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 4
    assert rows[0]["valid_from"].endswith(("Z", "+00:00"))


def test_collection_exports(d, tmp_path):
    collection = d.tables("customer")
    assert isinstance(collection, TableCollection)
    assert "customer" in collection and len(collection) == 1
    files = collection.history().to_parquet(tmp_path / "pq")
    assert pq.read_table(files["customer"]).num_rows == 4
    files = collection.to_csv(tmp_path / "csv")
    assert files["customer"].name == "customer.csv"
    frames = collection.to_pandas()
    assert len(frames["customer"]) == 2


def test_graph_json_and_networkx(d):
    graph = d.tables().to_graph_json()
    assert {n["type"] for n in graph["nodes"]} == {"customer"}
    assert len(graph["nodes"]) == 2
    assert graph["edges"] == []
    pytest.importorskip("networkx")
    g = d.tables().to_networkx()
    assert g.number_of_nodes() == 2
    states = {data["state"] for _, data in g.nodes(data=True)}
    assert states == {"active", "churned"}


def test_duckdb(d, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = d.tables().history().to_duckdb(tmp_path / "state.duckdb")
    con = duckdb.connect(str(path))
    try:
        assert con.execute("SELECT count(*) FROM customer").fetchone()[0] == 4
    finally:
        con.close()


def test_empty_results_keep_their_columns(d):
    df = d.table("customer").filter("FALSE").execute()
    assert len(df) == 0
    assert {"customer_id", "customer_state", "valid_from", "mrr"} <= set(df.columns)
    assert list(d.query("SELECT 1 AS x WHERE FALSE").execute().columns) == ["x"]
    early = d.history("customer").as_of("2000-01-01").to_pyarrow()
    assert early.num_rows == 0 and "customer_id" in early.column_names


def test_calls_from_several_threads(d):
    from concurrent.futures import ThreadPoolExecutor

    expected = d.history("customer").to_records()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: d.history("customer").to_records(), range(8)))
    assert all(r == expected for r in results)
    with ThreadPoolExecutor(max_workers=4) as pool:
        frames = list(pool.map(lambda _: d.table("customer").execute(), range(4)))
    assert all(len(f) == 2 for f in frames)
