"""The package's layering (docs/ARCHITECTURE.md): no import cycle between jaxprotect's
modules, and no module of a method family imports a command module."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "jaxprotect"
COMMANDS = {"jaxprotect.cli", "jaxprotect.flags", "jaxprotect.unlearnable.cli", "jaxprotect.distill.cli",
            "jaxprotect.privacy.cli"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PKG.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  modules = {module_name(p): p for p in PKG.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" for a in node.names] + [base]
      else:
        continue
      deps |= {t for t in targets if t in modules and t != name}
    graph[name] = deps
  return graph


def test_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 30
  # a package's __init__ re-exporting its submodules is not a cycle of code; drop those edges
  graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for d in graph[m]:
      if state.get(d) == 1:
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d, stack + [d])
    state[m] = 2

  for m in graph:
    if m not in state:
      visit(m, [m])


def test_method_families_do_not_import_commands():
  graph = import_graph()
  for m, deps in graph.items():
    if m in COMMANDS or m == "jaxprotect":
      continue
    assert not deps & COMMANDS, f"{m} imports a command module: {deps & COMMANDS}"
