"""The import graph between the project's packages, read from the source (every import statement,
function-level ones too), and the cycles in it.

A node is a subpackage of a top-level package (``cm3leon_jax.data``), a top-level module
(``cm3leon_jax.train``), or a top-level package with no subpackages (``tasks``).
"""

import ast
import os
from typing import Dict, List, Set, Tuple

Edge = Tuple[str, str, str]  # (importing node, imported node, 'file:line' of one such import)


def _module_name(root: str, path: str) -> str:
  parts = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules(root: str, packages) -> Dict[str, str]:
  """Dotted module name -> file, for every .py file of `packages` under `root`."""
  found = {}
  for package in packages:
    for folder, _, files in os.walk(os.path.join(root, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(folder, name)
          found[_module_name(root, path)] = path
  return found


def node_of(module: str, modules: Dict[str, str]) -> str:
  """The graph node a module belongs to (see the module docstring)."""
  parts = module.split('.')
  if len(parts) == 1:
    return module
  top_level_module = '.'.join(parts[:2])
  return top_level_module if top_level_module in modules else parts[0]


def _imported(tree: ast.AST, module: str, is_package: bool, modules: Dict[str, str]):
  """(imported module, line) for each import in `tree` that names a module of the project."""
  for stmt in ast.walk(tree):
    if isinstance(stmt, ast.Import):
      for alias in stmt.names:
        yield alias.name, stmt.lineno
    elif isinstance(stmt, ast.ImportFrom):
      base = stmt.module or ''
      if stmt.level:
        anchor = module.split('.')
        anchor = anchor[:len(anchor) - stmt.level + (1 if is_package else 0)]
        base = '.'.join(anchor + ([base] if base else []))
      for alias in stmt.names:
        candidate = f'{base}.{alias.name}'
        yield (candidate if candidate in modules else base), stmt.lineno


def package_edges(root: str, packages) -> List[Edge]:
  """Every import from one node to another among the modules of `packages` under `root`."""
  modules = _modules(root, packages)
  edges = []
  for module, path in sorted(modules.items()):
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    source = node_of(module, modules)
    is_package = path.endswith('__init__.py')
    for target, line in _imported(tree, module, is_package, modules):
      if target.split('.')[0] not in packages:
        continue
      target_node = node_of(target, modules)
      if target_node != source:
        edges.append((source, target_node, f'{os.path.relpath(path, root)}:{line}'))
  return edges


def cycles(edges: List[Edge]) -> List[List[str]]:
  """The strongly connected components of more than one node (Tarjan), each sorted."""
  graph: Dict[str, Set[str]] = {}
  for source, target, _ in edges:
    graph.setdefault(source, set()).add(target)
    graph.setdefault(target, set())
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found
