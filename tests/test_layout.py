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
  kernels = [m for m in graph if m.startswith("wsdjax.kernels")]
  assert len(kernels) >= 5, kernels
  for module in ("wsdjax.model", "wsdjax.sharding", *kernels):
    assert not reachable(graph, module) & {"wsdjax.plan", "wsdjax.schedules",
                                            "wsdjax.config"}, module
