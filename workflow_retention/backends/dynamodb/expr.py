"""Building DynamoDB request parameters: every attribute name goes through a placeholder
(``status``, ``data``, ``timestamp`` and ``token`` are reserved words)."""

from __future__ import annotations

from typing import Any

from .layout import Item, s


class Request:
    """Accumulates expression attribute names and values for one request."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        for placeholder, existing in self.names.items():
            if existing == attribute:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value: str) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = s(value)
        return placeholder

    def params(self, **expressions: Any) -> dict[str, Any]:
        out = {k: v for k, v in expressions.items() if v is not None}
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out


def projection(*attributes: str) -> dict[str, Any]:
    req = Request()
    return req.params(ProjectionExpression=", ".join(req.name(a) for a in attributes))


SK_OPERATORS = ("<", "<=", ">", ">=")


def query(partition: str, value: str, *, index: str | None = None, sk_prefix: tuple[str, str] | None = None,
          sk_between: tuple[str, str, str] | None = None, sk_compare: tuple[str, str, str] | None = None,
          fields: tuple[str, ...] = (), limit: int | None = None) -> dict[str, Any]:
    """Parameters of a Query on ``partition = value`` (optionally a sort-key condition and a projection).

    ``sk_compare``: ``(attribute, operator, value)`` with one of :data:`SK_OPERATORS`.
    """
    req = Request()
    cond = f"{req.name(partition)} = {req.value(value)}"
    if sk_prefix:
        cond += f" AND begins_with({req.name(sk_prefix[0])}, {req.value(sk_prefix[1])})"
    if sk_between:
        attr, low, high = sk_between
        cond += f" AND {req.name(attr)} BETWEEN {req.value(low)} AND {req.value(high)}"
    if sk_compare:
        attr, operator, bound = sk_compare
        if operator not in SK_OPERATORS:
            raise ValueError(f"sort-key operator must be one of {SK_OPERATORS}; got {operator!r}")
        cond += f" AND {req.name(attr)} {operator} {req.value(bound)}"
    return _read(req.params(KeyConditionExpression=cond,
                            ProjectionExpression=", ".join(req.name(f) for f in fields) or None), index, limit)


def scan_prefixes(prefixes: tuple[str, ...], fields: tuple[str, ...] = (), limit: int = 1000) -> dict[str, Any]:
    """Parameters of a Scan keeping items whose PK starts with one of ``prefixes``."""
    req = Request()
    pk = req.name("PK")
    cond = " OR ".join(f"begins_with({pk}, {req.value(p)})" for p in prefixes)
    return {**req.params(FilterExpression=cond,
                         ProjectionExpression=", ".join(req.name(f) for f in fields) or None), "Limit": limit}


def scan_equal(attribute: str, value: str, *, index: str | None = None, fields: tuple[str, ...] = (),
               limit: int | None = None) -> dict[str, Any]:
    """Parameters of a Scan (of the table, or of ``index``) keeping items whose ``attribute`` equals ``value``."""
    req = Request()
    return _read(req.params(FilterExpression=f"{req.name(attribute)} = {req.value(value)}",
                            ProjectionExpression=", ".join(req.name(f) for f in fields) or None), index, limit)


def _read(params: dict[str, Any], index: str | None, limit: int | None) -> dict[str, Any]:
    """A Query's or Scan's parameters with the index it reads and its page size, when given."""
    if index:
        params["IndexName"] = index
    if limit:
        params["Limit"] = limit
    return params


def condition(equal: dict[str, str]) -> dict[str, Any]:
    """A ConditionExpression: the item exists and each attribute holds the given string."""
    req = Request()
    parts = ["attribute_exists(" + req.name("PK") + ")"]
    parts += [f"{req.name(a)} = {req.value(v)}" for a, v in equal.items()]
    return req.params(ConditionExpression=" AND ".join(parts))


def keys_only(items: list[Item]) -> list[Item]:
    return [{"PK": i["PK"], "SK": i["SK"]} for i in items]


# -- PartiQL (ExecuteStatement, BatchExecuteStatement) -------------------------------


def quoted(name: str) -> str:
    """A PartiQL identifier: table, index or attribute name in double quotes (names here never hold one)."""
    if '"' in name:
        raise ValueError(f"a DynamoDB name with a double quote cannot be used in PartiQL: {name!r}")
    return f'"{name}"'


def select_in(table: str, partition: str, count: int, *, fields: tuple[str, ...], index: str | None = None) -> str:
    """``SELECT fields FROM table[.index] WHERE partition IN [?, …]`` with ``count`` parameters."""
    source = quoted(table) + (f".{quoted(index)}" if index else "")
    return (f"SELECT {', '.join(map(quoted, fields))} FROM {source} "
            f"WHERE {quoted(partition)} IN [{', '.join('?' * count)}]")
