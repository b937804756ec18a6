"""Print the DDL a pyworkflow-engine release runs on a new store (see README.md in this directory).

``python tests/sql/old_schemas/extract.py <release>/pyworkflow/storage/<dialect>.py <release>``: the
CREATE TABLE / CREATE INDEX string literals of ``ensure_schema_versions_table()`` and
``_initialize_schema()``, in source order (migrations excluded: a new store records them as applied).
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap

CREATE = re.compile(r"\s*CREATE\s+(TABLE|(UNIQUE\s+)?INDEX)", re.I)
FUNCTIONS = ("ensure_schema_versions_table", "_initialize_schema")


def ddl(path: str) -> list[tuple[str, int, str]]:
    tree = ast.parse(open(path).read())
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []
    for name in FUNCTIONS:
        if name in functions:
            literals = [n for n in ast.walk(functions[name])
                        if isinstance(n, ast.Constant) and isinstance(n.value, str) and CREATE.match(n.value)]
            found += [(name, n.lineno, n.value) for n in sorted(literals, key=lambda n: (n.lineno, n.col_offset))]
    return found


def main(path: str, release: str) -> None:
    module = "pyworkflow/storage/" + path.rsplit("/", 1)[-1]
    print(f"-- The DDL pyworkflow-engine {release} runs on a new store: every CREATE TABLE / CREATE INDEX")
    print(f"-- statement of {module} (ensure_schema_versions_table, _initialize_schema), verbatim and")
    print(f"-- in source order, extracted from the wheel pyworkflow_engine-{release}-py3-none-any.whl on PyPI")
    print("-- by tests/sql/old_schemas/extract.py. Statements are separated by ';' at the end of a line.")
    for name, line, text in ddl(path):
        body = textwrap.dedent(text.strip("\n")).strip().rstrip(";")
        print(f"\n-- {name}, line {line}\n{body};")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
