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


# ---- the house: commands at the root, the library in rooms ----
COMMANDS = {"aot", "bench", "branch", "branches", "compare", "eval", "export", "fit", "lr",
            "merge", "prepare", "river_valley", "sample", "train"}
ROOMS = {"analysis", "checkpoint", "config", "data", "model", "runtime", "schedule",
         "training"}


def test_the_root_holds_only_commands_and_the_rooms():
  """wsdjax/ holds `__init__`, one module per command and one folder per concept."""
  entries = {e for e in os.listdir(PACKAGE) if e != "__pycache__"}
  assert entries == {"__init__.py"} | {f"{c}.py" for c in COMMANDS} | ROOMS, entries ^ (
      {"__init__.py"} | {f"{c}.py" for c in COMMANDS} | ROOMS)


def test_every_command_declares_its_flags_one_way_and_runs_through_cli_run():
  """Flags as module-level `_NAME = flags.DEFINE_...` (or config_flags), `main(argv)`, and
  `cli.run(main)` under `__main__`: no flag-defining functions, no other entry."""
  for command in sorted(COMMANDS):
    path = os.path.join(PACKAGE, f"{command}.py")
    with open(path) as f:
      source = f.read()
    tree = ast.parse(source)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "main" in {f.name for f in functions}, command
    for f in functions:
      for node in ast.walk(f):
        assert not (isinstance(node, ast.Attribute) and node.attr.startswith("DEFINE_")), (
            f"{command}.{f.name} defines a flag")
    assert "cli.run(main)\n" in source.split('if __name__ == "__main__":')[1], command


def test_no_module_outside_training_receives_the_trainer():
  """Only training/ holds a Trainer: elsewhere no function takes a `trainer` argument and
  nothing constructs one (commands call one library function)."""
  found = []
  for name, path in _modules().items():
    if name.startswith("wsdjax.training"):
      continue
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        names = [a.arg for a in node.args.args + node.args.kwonlyargs]
        if "trainer" in names:
          found.append(f"{name}: {getattr(node, 'name', 'lambda')}(trainer)")
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "Trainer"):
        found.append(f"{name}: constructs a Trainer")
  assert found == []


def test_no_library_module_imports_a_command():
  graph = import_graph()
  commands = {f"wsdjax.{c}" for c in COMMANDS}
  offenders = {m: sorted(graph[m] & commands) for m in graph
               if m not in commands and graph[m] & commands}
  assert offenders == {}


def test_importing_the_package_changes_nothing():
  """`import wsdjax` and its rooms leave the environment as it was (no JAX_PLATFORMS)."""
  import subprocess
  import sys
  rooms = ", ".join(f"wsdjax.{r}" for r in sorted(ROOMS))
  code = ("import os; before = dict(os.environ); import wsdjax, " + rooms
          + "; import wsdjax.training.trainer; print(before == dict(os.environ))")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


def _named_paths(text: str) -> set[str]:
  """Repository paths a text names: wsdjax/..., configs/..., docs/..., tests/..., launch/..."""
  import re
  found = re.findall(r"(?<![\w./-])((?:wsdjax|configs|docs|tests|launch|notebooks)/"
                     r"[\w/.-]*\w\.(?:py|md|ipynb|sh))", text)
  return {p for p in found if "X." not in p and "_X" not in p}  # configs/X.py: a placeholder


def test_no_text_names_a_file_that_does_not_exist():
  """Docstrings, comments and docs point at files that are there."""
  sources = [p for p in _modules().values()]
  sources += [os.path.join(REPO, "README.md"), os.path.join(REPO, "Makefile")]
  for folder in ("docs", "configs", "launch"):
    sources += [os.path.join(REPO, folder, f) for f in os.listdir(os.path.join(REPO, folder))
                if f.endswith((".md", ".py", ".sh"))]
  missing = []
  for path in sources:
    with open(path) as f:
      text = f.read()
    missing += [f"{os.path.relpath(path, REPO)}: {p}" for p in sorted(_named_paths(text))
                if not os.path.exists(os.path.join(REPO, p))]
  assert missing == []
  assert _named_paths("see wsdjax/nowhere.py and `configs/tiny.py`.") == {
      "wsdjax/nowhere.py", "configs/tiny.py"}
