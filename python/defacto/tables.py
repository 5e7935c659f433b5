"""``DefactoTable`` and ``TableCollection``: lazy descriptions of rows of the state tables.

Nothing runs until ``execute()`` (or ``to_pyarrow()``, ``to_parquet()``, ...). A plain table,
history or ``as_of`` view runs ``defacto table``; once ``filter``/``select``/``order_by``/
``limit`` are applied, the rows come from ``defacto query`` over the SQL that ``sql()`` shows.
Rows arrive as Arrow IPC from the Rust process, so columns keep their types.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from .errors import NotFoundError, QueryError

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import pyarrow

    from ._defacto import Defacto

Instant = Union[str, datetime, date]


def instant_text(value: Instant) -> str:
    """An instant as RFC 3339 text with an offset, as the jobs take it. A date means its
    midnight UTC; a naive datetime is taken as UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    text = str(value).strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return f"{text}T00:00:00Z"
    if "T" in text or " " in text:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return instant_text(parsed)
    return text


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DefactoTable:
    """Rows of one entity type (current state, history, or state at an instant) or of a query.

    Every method returns a new table; the original is unchanged.
    """

    def __init__(self, defacto: "Defacto", *, entity: Optional[str] = None,
                 query: Optional[str] = None, history: bool = False,
                 as_of: Optional[str] = None, resolve_merges: bool = False,
                 filters: tuple[str, ...] = (), columns: tuple[str, ...] = (),
                 order: tuple[str, ...] = (), limit: Optional[int] = None,
                 inner: Optional[str] = None) -> None:
        self._d = defacto
        self._entity = entity
        self._query = query
        self._history = history
        self._as_of = as_of
        self._resolve = resolve_merges
        self._filters = filters
        self._columns = columns
        self._order = order
        self._limit = limit
        # SQL of earlier steps that this step reads as a subquery (see _wrapped)
        self._inner = inner

    def _with(self, **changes: Any) -> "DefactoTable":
        state = dict(entity=self._entity, query=self._query, history=self._history,
                     as_of=self._as_of, resolve_merges=self._resolve, filters=self._filters,
                     columns=self._columns, order=self._order, limit=self._limit,
                     inner=self._inner)
        state.update(changes)
        return DefactoTable(self._d, **state)

    def _wrapped(self) -> "DefactoTable":
        """This table's rows as the input of a new step: SQL evaluates WHERE before SELECT and
        LIMIT last, so a filter after a select (or anything after a limit) reads the
        earlier steps as a subquery."""
        return self._with(filters=(), columns=(), order=(), limit=None, inner=self.sql())

    def _base_step(self, what: str) -> None:
        if self._inner is not None:
            raise QueryError(f"{what}() goes before filter/select/mutate/order_by/limit")

    # ---- building ----------------------------------------------------------------------

    def as_of(self, timestamp: Instant) -> "DefactoTable":
        """The state at ``timestamp``: the rows valid then (use on ``history()``)."""
        if self._entity is None:
            raise QueryError("as_of() applies to entity tables, not to query()")
        self._base_step("as_of")
        return self._with(as_of=instant_text(timestamp), history=False)

    def resolve_merges(self) -> "DefactoTable":
        """Also the rows of the entities merged (transitively) into the entities shown."""
        if self._entity is None:
            raise QueryError("resolve_merges() applies to entity tables, not to query()")
        self._base_step("resolve_merges")
        return self._with(resolve_merges=True)

    def filter(self, *predicates: str) -> "DefactoTable":
        """Keeps the rows for which every SQL predicate holds, e.g. ``"mrr > 100"``."""
        t = self._wrapped() if self._columns or self._limit is not None else self
        return t._with(filters=t._filters + tuple(str(p) for p in predicates))

    def select(self, *columns: str) -> "DefactoTable":
        """Only these SQL expressions as columns, e.g. ``"customer_id"``, ``"mrr * 12 AS arr"``."""
        t = self._wrapped() if self._columns or self._limit is not None else self
        return t._with(columns=tuple(str(c) for c in columns))

    def mutate(self, **columns: str) -> "DefactoTable":
        """Adds computed columns: ``mutate(arr="mrr * 12")`` (SQL expressions by name)."""
        t = self._wrapped() if self._columns or self._limit is not None else self
        added = tuple(f"{expr} AS {_quote(name)}" for name, expr in columns.items())
        return t._with(columns=("*",) + added)

    def order_by(self, *keys: str) -> "DefactoTable":
        """Orders by these SQL expressions, e.g. ``"mrr DESC"``."""
        t = self._wrapped() if self._limit is not None else self
        return t._with(order=tuple(str(k) for k in keys))

    def limit(self, n: int) -> "DefactoTable":
        n = int(n) if self._limit is None else min(int(n), self._limit)
        return self._with(limit=n)

    # ---- SQL ---------------------------------------------------------------------------

    def _composed(self) -> bool:
        """Whether filter/select/order_by/limit were applied."""
        return bool(self._filters or self._columns or self._order or self._limit is not None
                    or self._inner is not None)

    def _plain(self) -> bool:
        """An entity table as ``defacto table`` shows it."""
        return self._entity is not None and not self._composed()

    def _base(self) -> str:
        if self._query is not None:
            return self._query.strip().rstrip(";")
        table = _quote(f"{self._entity}_history")
        if self._history:
            where = "TRUE"
        elif self._as_of is not None:
            t = self._as_of.replace("'", "''")
            where = (f"valid_from <= TIMESTAMP '{t}' AND "
                     f"(valid_to IS NULL OR valid_to > TIMESTAMP '{t}')")
        else:
            where = "valid_to IS NULL"
        if self._resolve and not self._history:
            ident = _quote(f"{self._entity}_id")
            # The entities merged into a shown one, transitively (as `defacto table
            # --resolve-merges` does).
            return (
                f"WITH RECURSIVE absorbed(id) AS ("
                f"SELECT h.{ident} FROM {table} h WHERE h.merged_into IN "
                f"(SELECT {ident} FROM {table} WHERE {where}) "
                f"UNION ALL SELECT h.{ident} FROM {table} h JOIN absorbed a "
                f"ON h.merged_into = a.id) "
                f"SELECT * FROM {table} WHERE ({where}) OR {ident} IN (SELECT id FROM absorbed)")
        return f"SELECT * FROM {table} WHERE {where}"

    def sql(self) -> str:
        """The SQL these rows come from (DataFusion dialect, over the tables ``defacto query``
        knows: ``<entity>``, ``<entity>_history``, ``rel_<type>``, ``rel_<type>_history``)."""
        base = self._base() if self._inner is None else self._inner
        if self._entity is not None and self._inner is None:
            default_order = (_quote(f"{self._entity}_id"), "valid_from")
        else:
            default_order = ()
        if not self._composed():
            # a query() runs as written (its ORDER BY would not survive being a subquery)
            return base if self._query is not None else f"{base} ORDER BY {', '.join(default_order)}"
        columns = ", ".join(self._columns) if self._columns else "*"
        sql = f"SELECT {columns} FROM ({base}) AS t"
        if self._filters:
            sql += " WHERE " + " AND ".join(f"({f})" for f in self._filters)
        order = self._order or (default_order if not self._columns else ())
        if order:
            sql += " ORDER BY " + ", ".join(order)
        if self._limit is not None:
            sql += f" LIMIT {self._limit}"
        return sql

    # ---- running -----------------------------------------------------------------------

    def _command(self, fmt: str) -> list[str]:
        if self._plain():
            args = ["table", self._entity]
            if self._history:
                args.append("--history")
            elif self._as_of is not None:
                args += ["--as-of", self._as_of]
            if self._resolve:
                args.append("--resolve-merges")
        else:
            args = ["query", self.sql()]
        return args + ["--format", fmt]

    def _run(self, fmt: str, arrow: bool) -> tuple[bytes, Optional[bytes]]:
        try:
            _, out, ipc = self._d._run(self._command(fmt), arrow=arrow)
        except QueryError as e:
            unknown = f"Unknown table '{self._entity}_history'"
            if self._entity is not None and e.message.startswith(unknown):
                raise NotFoundError(f"Unknown entity type '{self._entity}'") from None
            raise
        return out, ipc

    def to_pyarrow(self) -> "pyarrow.Table":
        """The rows as a ``pyarrow.Table`` (read from the Arrow IPC stream without copying)."""
        import pyarrow as pa

        _, ipc = self._run("json", arrow=True)
        if ipc is None:
            return pa.table({})
        with pa.ipc.open_stream(pa.py_buffer(ipc)) as reader:
            return reader.read_all()

    def execute(self) -> "pandas.DataFrame":
        """The rows as a pandas DataFrame."""
        table = self.to_pyarrow()
        return table.to_pandas()

    to_pandas = execute

    def to_records(self) -> list[dict]:
        """The rows as the JSON objects ``--format json`` prints (null cells absent)."""
        out, _ = self._run("json", arrow=False)
        text = out.decode("utf-8").strip()
        return json.loads(text) if text else []

    def to_parquet(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the rows to one Parquet file."""
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_pyarrow(), path)
        return path

    def to_csv(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the rows as CSV, exactly as ``defacto table/query --format csv`` prints them
        (a header, timestamps as RFC 3339 text)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out, _ = self._run("csv", arrow=False)
        path.write_bytes(out)
        return path

    def __repr__(self) -> str:
        return f"DefactoTable({self.sql()!r})"


class TableCollection:
    """Tables of several entity types: indexable by name, iterable as ``(name, table)``."""

    def __init__(self, defacto: "Defacto", names: list[str], history: bool = False) -> None:
        self._d = defacto
        self._names = list(names)
        self._history = history

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, name: str) -> DefactoTable:
        if name not in self._names:
            raise NotFoundError(
                f"Unknown entity type '{name}'. Available entity types: [{', '.join(self._names)}]")
        return self._d.history(name) if self._history else self._d.table(name)

    def __iter__(self) -> Iterator[tuple[str, DefactoTable]]:
        for name in self._names:
            yield name, self[name]

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def history(self) -> "TableCollection":
        """The same entity types with their full SCD2 history."""
        return TableCollection(self._d, self._names, history=True)

    def to_pandas(self) -> dict[str, "pandas.DataFrame"]:
        return {name: table.execute() for name, table in self}

    def to_pyarrow(self) -> dict[str, "pyarrow.Table"]:
        return {name: table.to_pyarrow() for name, table in self}

    def to_parquet(self, directory: Union[str, os.PathLike]) -> dict[str, Path]:
        """One ``<entity>.parquet`` per entity type in ``directory``."""
        directory = Path(directory)
        return {name: table.to_parquet(directory / f"{name}.parquet") for name, table in self}

    def to_csv(self, directory: Union[str, os.PathLike]) -> dict[str, Path]:
        """One ``<entity>.csv`` per entity type in ``directory``."""
        directory = Path(directory)
        return {name: table.to_csv(directory / f"{name}.csv") for name, table in self}

    def to_duckdb(self, path: Union[str, os.PathLike]) -> Path:
        """One DuckDB table per entity type in the database file ``path`` (needs ``duckdb``)."""
        try:
            import duckdb
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("to_duckdb() needs the duckdb package: pip install duckdb") from e
        con = duckdb.connect(str(path))
        try:
            for name, table in self:
                data = table.to_pyarrow()  # noqa: F841 - read by name in the SQL below
                con.execute(f"CREATE OR REPLACE TABLE {_quote(name)} AS SELECT * FROM data")
        finally:
            con.close()
        return Path(path)

    def to_graph_json(self) -> dict:
        """``{nodes, edges}`` of the current state (``defacto export --format graph-json``):
        nodes ``{id, type, state, properties}``, edges ``{source, target, type, properties}``."""
        if self._history:
            raise QueryError("to_graph_json() exports current state; not of history()")
        with tempfile.TemporaryDirectory(prefix="defacto-graph-") as out:
            args = ["export", "--format", "graph-json", "--out", out]
            for name in self._names:
                args += ["--entity", name]
            self._d._run(args)
            return json.loads((Path(out) / "graph.json").read_text(encoding="utf-8"))

    def to_networkx(self):
        """The current state as a ``networkx.DiGraph`` (needs ``networkx``): one node per
        entity with its type, state and properties, one edge per relationship."""
        try:
            import networkx as nx
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("to_networkx() needs the networkx package: pip install networkx") from e
        graph = self.to_graph_json()
        g = nx.DiGraph()
        for node in graph["nodes"]:
            g.add_node(node["id"], type=node["type"], state=node.get("state"),
                       **(node.get("properties") or {}))
        for edge in graph["edges"]:
            g.add_edge(edge["source"], edge["target"], type=edge.get("type"),
                       **(edge.get("properties") or {}))
        return g

    def to_neo4j(self, url: str, auth: tuple[str, str] | None = None):
        raise NotImplementedError("to_neo4j() is not part of the batch product")

    def __repr__(self) -> str:
        kind = "history" if self._history else "current"
        return f"TableCollection({self._names}, {kind})"
