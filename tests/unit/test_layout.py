"""The package's import graph, read from the source (every import, at module level or inside
a function): no circles, and the model and its kernels reach nothing about schedules or
plans."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "wsdjax")


def _modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
  return out


def import_graph() -> dict[str, set[str]]:
  """Module -> the package's modules it imports (`from wsdjax import x` counts as x)."""
  modules = _modules()
  graph = {name: set() for name in modules}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      graph[name] |= {t for t in targets if t in modules and t != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for w in graph[todo.pop()] - seen:
      seen.add(w)
      todo.append(w)
  return seen


def test_no_import_circles():
  assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_model_knows_nothing_of_schedules_or_plans():
  graph = import_graph()
  kernels = [m for m in graph if m.startswith("wsdjax.model.kernels")]
  assert len(kernels) >= 5, kernels
  for module in ("wsdjax.model.transformer", "wsdjax.runtime.sharding", *kernels):
    assert not reachable(graph, module) & {"wsdjax.schedule.plan", "wsdjax.schedule.builders",
                                            "wsdjax.config"}, module


def _private_uses(source: str) -> list[str]:
  """`module._name` where `module` was imported from the package (`from wsdjax import x`,
  `import wsdjax.x as y`): another module's private name."""
  tree = ast.parse(source)
  aliases = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsdjax"):
      aliases |= {a.asname or a.name for a in node.names}
    elif isinstance(node, ast.Import):
      aliases |= {a.asname or a.name.split(".")[0] for a in node.names
                  if a.name.startswith("wsdjax")}
  return sorted(f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__"))


def test_no_module_reaches_into_another_modules_private_names():
  """The package and the notebooks use each other's public names only (tests may not)."""
  import json
  found = {}
  for name, path in _modules().items():
    with open(path) as f:
      found[name] = _private_uses(f.read())
  for path in sorted(os.listdir(os.path.join(REPO, "notebooks"))):
    if path.endswith(".ipynb"):
      with open(os.path.join(REPO, "notebooks", path)) as f:
        cells = json.load(f)["cells"]
      code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
      code = "\n".join(line for line in code.splitlines()  # no shell or magic lines
                       if not line.lstrip().startswith(("!", "%")))
      found[path] = _private_uses(code)
  assert {k: v for k, v in found.items() if v} == {}
  assert _private_uses("from wsdjax import plan as p\np._as_config(1)") == ["p._as_config"]


# Config definitions: a flat list of fields with a comment each, long by nature.
LONG_BY_NATURE = {("wsdjax.config.fields", "base_config"), ("wsdjax.config.paper", "paper_config")}


def test_functions_stay_small_enough_to_read():
  """No function over 50 lines (config definitions aside). Modules have no line cap: a
  module is sized by the one concept it holds (shared/DESIGN.md)."""
  too_long = []
  for name, path in _modules().items():
    with open(path) as f:
      source = f.read()
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 50 and (name, node.name) not in LONG_BY_NATURE:
          too_long.append(f"{name}.{node.name}: {length} lines")
  assert not too_long, too_long
