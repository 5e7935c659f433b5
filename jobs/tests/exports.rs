//! `defacto export`, `query` and `table` through the real binary: every format read back
//! (Parquet and Delta with arrow, CSV parsed, the warehouse through real SQLite and Postgres)
//! holds the same rows and values as the Delta history the build wrote.

#[macro_use]
mod harness;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use defacto_core::definitions::Definitions;
use defacto_jobs::history_table::{entity_schema, relationship_schema, relationship_types};
use defacto_jobs::lake::{tables, Lake};
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimestampMicrosecondType,
};
use deltalake::logstore::object_store::ObjectStoreExt;
use harness::{fixture, run, Backend, Dir, TestCommand, POSTGRES_URL};
use serde_json::Value as Json;
use sqlx::Row;

fn showcase(backend: Backend) -> Dir {
    let dir = Dir::empty().on(backend);
    fixture::copy_dir(&fixture::repo_root().join("examples/showcase"), dir.path());
    dir
}

/// The showcase ingested, normalized, built and ticked.
fn built(backend: Backend) -> Dir {
    let dir = showcase(backend);
    for source in ["app", "billing"] {
        let file = format!("data/{source}.jsonl");
        run(&dir, &["ingest", "--source", source, &file]);
    }
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    run(&dir, &["tick", "--as-of", "2024-05-15T00:00:00Z"]);
    dir
}

fn env(dir: &Dir) -> HashMap<String, String> {
    dir.env().iter().cloned().collect()
}

/// Where a folder's file exports go: a local folder, or a prefix of its S3 bucket.
fn out_url(dir: &Dir, name: &str) -> String {
    match env(dir).get("DEFACTO_LAKE") {
        Some(lake) => format!("{}/exports/{name}", lake.trim_end_matches("/lake")),
        None => dir.path().join("exports").join(name).display().to_string(),
    }
}

fn store_options(dir: &Dir) -> Vec<(String, String)> {
    env(dir)
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect()
}

fn read_object(
    dir: &Dir,
    url: &str,
) -> impl deltalake::parquet::file::reader::ChunkReader + std::ops::Deref<Target = [u8]> {
    let (base, file) = url.rsplit_once('/').unwrap();
    let url = deltalake::ensure_table_uri(base).unwrap();
    let store = deltalake::logstore::store_for(&url, store_options(dir)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        store
            .get(&deltalake::Path::from(file))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    })
}

/// Rows as comparable text cells: numbers with their exact value, timestamps as epoch
/// microseconds, nulls as `None`; sorted.
type Rows = Vec<Vec<Option<String>>>;

fn cells(batches: &[RecordBatch]) -> Rows {
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        c.is_valid(i).then(|| match c.data_type() {
                            DataType::Utf8 => c.as_string::<i32>().value(i).to_string(),
                            DataType::Utf8View => c.as_string_view().value(i).to_string(),
                            DataType::Float64 => {
                                format!("{:?}", c.as_primitive::<Float64Type>().value(i))
                            }
                            DataType::Int64 => c.as_primitive::<Int64Type>().value(i).to_string(),
                            DataType::Boolean => c.as_boolean().value(i).to_string(),
                            DataType::Timestamp(..) => c
                                .as_primitive::<TimestampMicrosecondType>()
                                .value(i)
                                .to_string(),
                            other => panic!("unexpected column type {other}"),
                        })
                    })
                    .collect(),
            );
        }
    }
    rows.sort();
    rows
}

/// A text cell as the column type reads it (CSV and SQLite timestamps are RFC 3339 text).
fn typed(text: &str, t: &DataType) -> String {
    match t {
        DataType::Float64 => format!("{:?}", text.parse::<f64>().unwrap()),
        DataType::Timestamp(..) => DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .timestamp_micros()
            .to_string(),
        _ => text.to_string(),
    }
}

/// The export tables of the showcase: (name, lake table, schema).
fn tables_of(dir: &Dir, version: &str) -> Vec<(String, String, SchemaRef)> {
    let defs = Definitions::load(dir.path()).unwrap();
    let mut out: Vec<_> = defs
        .entities
        .values()
        .map(|e| {
            (
                e.name.clone(),
                tables::history(version, &e.name),
                entity_schema(e),
            )
        })
        .collect();
    for rel in relationship_types(&defs) {
        out.push((
            format!("rel_{rel}"),
            tables::relationship_history(version, &rel),
            relationship_schema(&defs, &rel),
        ));
    }
    out
}

fn lake_of(dir: &Dir) -> Lake {
    match env(dir).get("DEFACTO_LAKE") {
        Some(url) => Lake::with_options(url, store_options(dir).into_iter().collect()).unwrap(),
        None => Lake::new(&dir.path().join(".defacto/lake").display().to_string()).unwrap(),
    }
}

fn delta_rows(lake: &Lake, table: &str, schema: &SchemaRef, current: bool) -> Rows {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let filter = if current {
        " WHERE valid_to IS NULL"
    } else {
        ""
    };
    let sql = format!("SELECT * FROM t{filter}");
    cells(
        &rt.block_on(lake.query_all(&[("t", table, schema.clone())], &sql))
            .unwrap(),
    )
}

fn parquet_rows(dir: &Dir, url: &str) -> Rows {
    let bytes = read_object(dir, url);
    let reader =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
    cells(&reader.map(Result::unwrap).collect::<Vec<_>>())
}

fn csv_rows(dir: &Dir, url: &str, schema: &SchemaRef) -> Rows {
    let bytes = read_object(dir, url);
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(header, names, "CSV columns: system columns then properties");
    let mut rows: Rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            r.iter()
                .zip(schema.fields())
                .map(|(cell, f)| (!cell.is_empty()).then(|| typed(cell, f.data_type())))
                .collect()
        })
        .collect();
    // Row order as written: by id then valid_from.
    let keys: Vec<_> = rows.iter().map(|r| (r[0].clone(), r.clone())).collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        keys.iter().map(|k| &k.0).collect::<Vec<_>>(),
        sorted.iter().map(|k| &k.0).collect::<Vec<_>>(),
        "CSV rows are sorted by id"
    );
    rows.sort();
    rows
}

/// A warehouse table read through the database driver (not through defacto).
fn warehouse_rows(dir: &Dir, version: &str, table: &str, schema: &SchemaRef) -> Rows {
    let env = env(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut rows: Rows = match env.get("DEFACTO_NAMESPACE") {
            Some(ns) => {
                let pool = sqlx::PgPool::connect(POSTGRES_URL).await.unwrap();
                let sql = format!("SELECT * FROM \"{ns}_{version}\".\"{table}\"");
                let fetched = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                fetched
                    .iter()
                    .map(|r| {
                        schema
                            .fields()
                            .iter()
                            .enumerate()
                            .map(|(i, f)| match f.data_type() {
                                DataType::Utf8 => r.get::<Option<String>, _>(i),
                                DataType::Float64 => {
                                    r.get::<Option<f64>, _>(i).map(|v| format!("{v:?}"))
                                }
                                DataType::Int64 => {
                                    r.get::<Option<i64>, _>(i).map(|v| v.to_string())
                                }
                                DataType::Boolean => {
                                    r.get::<Option<bool>, _>(i).map(|v| v.to_string())
                                }
                                _ => r
                                    .get::<Option<DateTime<Utc>>, _>(i)
                                    .map(|v| v.timestamp_micros().to_string()),
                            })
                            .collect()
                    })
                    .collect()
            }
            None => {
                let url = format!(
                    "sqlite://{}",
                    dir.path().join(".defacto/defacto.db").display()
                );
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let sql = format!("SELECT * FROM \"defacto_{version}_{table}\"");
                let fetched = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                fetched
                    .iter()
                    .map(|r| {
                        schema
                            .fields()
                            .iter()
                            .enumerate()
                            .map(|(i, f)| match f.data_type() {
                                DataType::Float64 => {
                                    r.get::<Option<f64>, _>(i).map(|v| format!("{v:?}"))
                                }
                                DataType::Int64 => {
                                    r.get::<Option<i64>, _>(i).map(|v| v.to_string())
                                }
                                DataType::Boolean => {
                                    r.get::<Option<bool>, _>(i).map(|v| v.to_string())
                                }
                                t => r.get::<Option<String>, _>(i).map(|v| typed(&v, t)),
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        rows.sort();
        rows
    })
}

fn exported(result: &Json) -> HashMap<String, (String, u64)> {
    result["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                (
                    t["mode"].as_str().unwrap().to_string(),
                    t["rows"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn every_format_holds_the_same_history(backend: Backend) {
    let dir = built(backend);
    let lake = lake_of(&dir);
    let wh = run(&dir, &["export", "--format", "warehouse"]);
    let version = wh["version"].as_str().unwrap().to_string();
    let parquet_out = out_url(&dir, "parquet");
    let csv_out = out_url(&dir, "csv");
    let delta_out = out_url(&dir, "delta");
    let current_out = out_url(&dir, "current");
    let parquet = run(
        &dir,
        &[
            "export",
            "--format",
            "parquet",
            "--history",
            "--out",
            &parquet_out,
        ],
    );
    run(
        &dir,
        &["export", "--format", "csv", "--history", "--out", &csv_out],
    );
    run(
        &dir,
        &[
            "export",
            "--format",
            "delta",
            "--history",
            "--out",
            &delta_out,
        ],
    );
    run(
        &dir,
        &["export", "--format", "parquet", "--out", &current_out],
    );
    let delta_lake = match env(&dir).get("DEFACTO_LAKE") {
        Some(_) => {
            Lake::with_options(&delta_out, store_options(&dir).into_iter().collect()).unwrap()
        }
        None => Lake::new(&delta_out).unwrap(),
    };
    let counts = exported(&parquet);
    let mut total = 0;
    for (name, table, schema) in tables_of(&dir, &version) {
        let history = format!("{name}_history");
        let expected = delta_rows(&lake, &table, &schema, false);
        total += expected.len();
        assert_eq!(
            counts[&history].1 as usize,
            expected.len(),
            "{history}: rows in the result"
        );
        assert_eq!(
            parquet_rows(&dir, &format!("{parquet_out}/{history}.parquet")),
            expected,
            "parquet {history}"
        );
        assert_eq!(
            csv_rows(&dir, &format!("{csv_out}/{history}.csv"), &schema),
            expected,
            "csv {history}"
        );
        assert_eq!(
            delta_rows(&delta_lake, &history, &schema, false),
            expected,
            "delta {history}"
        );
        assert_eq!(
            warehouse_rows(&dir, &version, &history, &schema),
            expected,
            "warehouse {history}"
        );
        let current = delta_rows(&lake, &table, &schema, true);
        assert_eq!(
            parquet_rows(&dir, &format!("{current_out}/{name}.parquet")),
            current,
            "parquet {name}"
        );
        assert_eq!(
            warehouse_rows(&dir, &version, &name, &schema),
            current,
            "warehouse view {name}"
        );
    }
    assert!(
        total > 100,
        "the showcase exports real history ({total} rows)"
    );
    assert_eq!(parquet["rows_written"].as_u64(), Some(total as u64));
    assert!(parquet["bytes_written"].as_u64().unwrap() > 0);
}
on_all!(every_format_holds_the_same_history);

/// One more lead for the app source, after everything else.
const NEW_LEAD: &str = r#"{"event": "lead_captured", "occurred_at": "2024-04-20T09:00:00Z", "message_id": "msg_new_1", "traits": {"email": "new.lead@example.test"}, "context": {"channel": "ads", "page": "/demo"}}"#;

fn warehouse_exports_load_only_what_changed(backend: Backend) {
    let dir = showcase(backend);
    run(&dir, &["ingest", "--source", "app", "data/app.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    let first = run(&dir, &["export", "--format", "warehouse"]);
    let version = first["version"].as_str().unwrap().to_string();
    assert!(
        exported(&first).values().all(|(mode, _)| mode == "full"),
        "{first}"
    );
    let same = |dir: &Dir| {
        for (name, table, schema) in tables_of(dir, &version) {
            let history = format!("{name}_history");
            let expected = delta_rows(&lake_of(dir), &table, &schema, false);
            assert_eq!(
                warehouse_rows(dir, &version, &history, &schema),
                expected,
                "{history}"
            );
            let current = delta_rows(&lake_of(dir), &table, &schema, true);
            assert_eq!(
                warehouse_rows(dir, &version, &name, &schema),
                current,
                "{name}"
            );
        }
    };
    same(&dir);

    // Nothing changed: nothing is loaded, nothing duplicated.
    let again = run(&dir, &["export", "--format", "warehouse"]);
    assert_eq!(again["rows_written"].as_u64(), Some(0), "{again}");
    assert!(exported(&again)
        .values()
        .all(|(mode, _)| mode == "unchanged"));
    same(&dir);

    // Another source's events: only the entities they change are reloaded.
    run(
        &dir,
        &["ingest", "--source", "billing", "data/billing.jsonl"],
    );
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    let third = run(&dir, &["export", "--format", "warehouse"]);
    assert_eq!(
        exported(&third)["customer_history"].0,
        "incremental",
        "{third}"
    );
    same(&dir);

    if backend == Backend::Postgres {
        // Key columns compare bytewise (COLLATE "C"), other text columns as the database does;
        // a table exported before that (default collation) still takes incremental loads.
        let schema = format!("{}_{version}", env(&dir)["DEFACTO_NAMESPACE"]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let pool = rt.block_on(sqlx::PgPool::connect(POSTGRES_URL)).unwrap();
        let collations: Vec<(String, Option<String>)> = rt
            .block_on(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT column_name::text, collation_name::text FROM information_schema.columns \
                     WHERE table_schema = '{schema}' AND table_name = 'customer_history' \
                     AND data_type = 'text'"
                )))
                .fetch_all(&pool),
            )
            .unwrap();
        assert!(collations.len() > 3, "{collations:?}");
        for (column, collation) in &collations {
            let expected = (column == "customer_id").then_some("C");
            assert_eq!(collation.as_deref(), expected, "{column}");
        }
        for sql in [
            format!("DROP VIEW \"{schema}\".customer"),
            format!("ALTER TABLE \"{schema}\".customer_history ALTER COLUMN customer_id TYPE text COLLATE \"default\""),
            format!("CREATE VIEW \"{schema}\".customer AS SELECT * FROM \"{schema}\".customer_history WHERE valid_to IS NULL"),
        ] {
            rt.block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool))
                .unwrap();
        }
    }

    // One new lead: one new customer row, nothing else.
    dir.write("more.jsonl", &format!("{NEW_LEAD}\n"));
    run(&dir, &["ingest", "--source", "app", "more.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    let fourth = exported(&run(&dir, &["export", "--format", "warehouse"]));
    assert_eq!(fourth["customer_history"], ("incremental".to_string(), 1));
    assert_eq!(fourth["order_history"], ("unchanged".to_string(), 0));
    same(&dir);

    // --full reloads everything, to the same rows.
    let full = exported(&run(&dir, &["export", "--format", "warehouse", "--full"]));
    assert!(full.values().all(|(mode, _)| mode == "full"));
    same(&dir);
}
on_both!(warehouse_exports_load_only_what_changed);

#[test]
fn a_reader_sees_the_old_or_the_new_warehouse_table() {
    let dir = showcase(Backend::Postgres);
    run(&dir, &["ingest", "--source", "app", "data/app.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    let first = run(&dir, &["export", "--format", "warehouse"]);
    let version = first["version"].as_str().unwrap().to_string();
    let ns = env(&dir)["DEFACTO_NAMESPACE"].clone();
    let count_sql = format!("SELECT count(*) FROM \"{ns}_{version}\".customer_history");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(sqlx::PgPool::connect(POSTGRES_URL)).unwrap();
    let count = |pool: &sqlx::PgPool| -> Result<i64, sqlx::Error> {
        rt.block_on(
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql.clone())).fetch_one(pool),
        )
    };
    let before = count(&pool).unwrap();
    run(
        &dir,
        &["ingest", "--source", "billing", "data/billing.jsonl"],
    );
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-05-01T00:00:00Z"]);
    let after_rows = delta_rows(
        &lake_of(&dir),
        &tables::history(&version, "customer"),
        &entity_schema(&Definitions::load(dir.path()).unwrap().entities["customer"]),
        false,
    )
    .len() as i64;
    assert_ne!(before, after_rows);
    // Full reloads (a swap) and an incremental load, each watched by a reader.
    for args in [
        vec!["export", "--format", "warehouse", "--full"],
        vec!["export", "--format", "warehouse"],
    ] {
        let mut child = TestCommand::new(&dir).args(&args).spawn();
        let mut seen = std::collections::BTreeSet::new();
        while child.try_wait().unwrap().is_none() {
            seen.insert(count(&pool).expect("the table is readable during the export"));
        }
        assert!(child.wait().unwrap().success());
        seen.insert(count(&pool).unwrap());
        assert!(
            seen.iter().all(|c| *c == before || *c == after_rows),
            "a reader saw {seen:?}; only {before} (old) or {after_rows} (new) are allowed"
        );
        assert!(seen.contains(&after_rows));
    }
}

#[test]
fn graph_json_has_current_nodes_and_edges() {
    let dir = built(Backend::Sqlite);
    let out = out_url(&dir, "graph");
    let r = run(&dir, &["export", "--format", "graph-json", "--out", &out]);
    let graph: Json =
        serde_json::from_slice(&std::fs::read(format!("{out}/graph.json")).unwrap()).unwrap();
    let nodes = graph["nodes"].as_array().unwrap();
    let edges = graph["edges"].as_array().unwrap();
    let customers = run(&dir, &["table", "customer", "--format", "json"]);
    let customers = customers.as_array().unwrap();
    let customer_nodes: Vec<&Json> = nodes.iter().filter(|n| n["type"] == "customer").collect();
    assert_eq!(customer_nodes.len(), customers.len());
    let first = &customers[0];
    let node = customer_nodes
        .iter()
        .find(|n| n["id"] == first["customer_id"])
        .unwrap();
    assert_eq!(node["state"], first["customer_state"]);
    assert!(node["properties"]
        .as_object()
        .unwrap()
        .contains_key("email"));
    let placed = run(
        &dir,
        &[
            "query",
            "SELECT count(*) AS n FROM rel_placed",
            "--format",
            "json",
        ],
    );
    let placed_edges = edges.iter().filter(|e| e["type"] == "placed").count() as u64;
    assert_eq!(placed[0]["n"].as_u64(), Some(placed_edges));
    assert!(placed_edges > 0);
    assert_eq!(
        r["rows_written"].as_u64(),
        Some((nodes.len() + edges.len()) as u64)
    );
}

#[test]
fn query_reads_state_tables_and_names_what_is_missing() {
    let dir = built(Backend::Sqlite);
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    let n = run(
        &dir,
        &[
            "query",
            "SELECT count(*) AS n FROM customer",
            "--format",
            "json",
        ],
    );
    assert_eq!(
        n[0]["n"].as_u64(),
        Some(current.as_array().unwrap().len() as u64)
    );
    let active = run(
        &dir,
        &[
            "query",
            "SELECT customer_id FROM customer_history WHERE valid_to IS NULL AND customer_state = 'active' ORDER BY customer_id",
            "--format",
            "json",
        ],
    );
    let expected: Vec<&Json> = current
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["customer_state"] == "active")
        .map(|r| &r["customer_id"])
        .collect();
    let got: Vec<&Json> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["customer_id"])
        .collect();
    assert_eq!(got, expected);

    let bad_column = TestCommand::new(&dir)
        .args(["query", "SELECT nope FROM customer_history"])
        .run();
    bad_column.assert_code(1);
    assert!(
        bad_column.stderr.contains("QueryError: Unknown column")
            && bad_column.stderr.contains("nope"),
        "{}",
        bad_column.stderr
    );
    let bad_table = TestCommand::new(&dir)
        .args(["query", "SELECT * FROM nope_history"])
        .run();
    bad_table.assert_code(1);
    assert!(
        bad_table
            .stderr
            .contains("QueryError: Unknown table 'nope_history'"),
        "{}",
        bad_table.stderr
    );
    assert!(
        bad_table.stderr.contains("customer_history"),
        "lists the tables: {}",
        bad_table.stderr
    );
    for statement in ["DELETE FROM customer_history", "CREATE TABLE x (a INT)"] {
        let out = TestCommand::new(&dir).args(["query", statement]).run();
        out.assert_code(1);
        assert!(
            out.stderr.contains("QueryError"),
            "{statement}: {}",
            out.stderr
        );
    }
    let csv = TestCommand::new(&dir)
        .args(["query", "SELECT customer_id, valid_from FROM customer_history ORDER BY customer_id, valid_from LIMIT 1", "--format", "csv"])
        .run();
    csv.assert_code(0);
    let line = csv.stdout.lines().nth(1).unwrap();
    assert!(line.ends_with("+00:00"), "canonical timestamp text: {line}");
}

#[test]
fn table_as_of_equals_history_filtered_by_hand_and_resolve_merges_adds_losers() {
    let dir = built(Backend::Sqlite);
    let history = run(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    let history = history.as_array().unwrap();
    let instant = |v: &Json| v.as_str().map(|s| DateTime::parse_from_rfc3339(s).unwrap());
    for t in [
        "2024-01-15T00:00:00Z",
        "2024-02-29T12:00:00Z",
        "2024-04-01T00:00:00Z",
    ] {
        let at = DateTime::parse_from_rfc3339(t).unwrap();
        let by_hand: Vec<&Json> = history
            .iter()
            .filter(|r| {
                instant(&r["valid_from"]).unwrap() <= at
                    && r.get("valid_to").and_then(instant).is_none_or(|to| to > at)
            })
            .collect();
        let as_of = run(
            &dir,
            &["table", "customer", "--as-of", t, "--format", "json"],
        );
        assert_eq!(
            as_of.as_array().unwrap().iter().collect::<Vec<_>>(),
            by_hand,
            "as of {t}"
        );
    }

    // A merge: the loser's rows come back with --resolve-merges.
    let dir = Dir::from_fixture("cust");
    dir.write(
        "e.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T10:00:00Z\",\"email\":\"bob@x.com\"}\n\
         {\"type\":\"signup\",\"ts\":\"2024-01-15T10:00:00Z\",\"email\":\"alice@x.com\"}\n",
    );
    run(&dir, &["ingest", "--source", "app", "e.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-01-16T00:00:00Z"]);
    let ids: Vec<String> = run(&dir, &["table", "customer", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap().to_string())
        .collect();
    let (loser, winner) = (&ids[0], &ids[1]);
    run(
        &dir,
        &["merge", loser, winner, "--as-of", "2024-02-01T00:00:00Z"],
    );
    let plain = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(plain.as_array().unwrap().len(), 1);
    let resolved = run(
        &dir,
        &["table", "customer", "--resolve-merges", "--format", "json"],
    );
    let resolved = resolved.as_array().unwrap();
    assert!(
        resolved
            .iter()
            .any(|r| r["customer_id"] == *loser.as_str() && r["merged_into"] == *winner.as_str()),
        "{resolved:#?}"
    );
    let loser_rows = history_of(&dir, loser);
    assert_eq!(
        resolved.len(),
        1 + loser_rows,
        "the winner's current row and every row of the loser"
    );
}

fn history_of(dir: &Dir, id: &str) -> usize {
    run(dir, &["table", "customer", "--history", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["customer_id"] == id)
        .count()
}

// CONTRACTS K8
#[test]
fn export_errors_are_clear_and_leave_nothing_half_written() {
    let dir = built(Backend::Sqlite);
    let out = out_url(&dir, "files");
    run(&dir, &["export", "--format", "parquet", "--out", &out]);
    let before: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let unknown = TestCommand::new(&dir)
        .args([
            "export", "--format", "parquet", "--out", &out, "--entity", "nope",
        ])
        .run();
    unknown.assert_code(1);
    assert!(
        unknown
            .stderr
            .contains("NotFoundError: Unknown entity type 'nope'"),
        "{}",
        unknown.stderr
    );

    dir.write("blocker", "a file where a folder should be");
    let blocked = dir.path().join("blocker/out").display().to_string();
    let unwritable = TestCommand::new(&dir)
        .args(["export", "--format", "csv", "--out", &blocked])
        .run();
    unwritable.assert_code(1);
    assert!(
        unwritable
            .stderr
            .contains("StorageError: Opening the export location")
            && unwritable.stderr.contains("failed: "),
        "{}",
        unwritable.stderr
    );

    let no_out = TestCommand::new(&dir)
        .args(["export", "--format", "csv"])
        .run();
    no_out.assert_code(2);
    assert!(no_out.stderr.contains("needs --out"), "{}", no_out.stderr);

    let down = TestCommand::new(&dir)
        .env("DEFACTO_DATABASE", "postgres://postgres@127.0.0.1:1/test")
        .args(["export", "--format", "warehouse"])
        .run();
    down.assert_code(1);
    assert!(
        down.stderr
            .contains("StorageError: Connecting to the catalog database failed"),
        "{}",
        down.stderr
    );

    let after: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "no temporary or partial files are left");
    assert!(after.iter().all(|f| !f.to_string_lossy().starts_with('.')));
}
