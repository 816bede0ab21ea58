"""Which project module imports which (o. = orchestrator, t. = tasks), and the import cycles.

    python docs/module_graph.py > docs/module_graph_after.txt
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "tasks")


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = subs if any(n in known for n in subs) else [node.module]
        else:
            continue
        found |= {n for n in names if n in known and n != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    found, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                found.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def short(n: str) -> str:
    return n.replace("orchestrator.", "o.").replace("tasks.", "t.")


if __name__ == "__main__":
    mods = modules()
    graph = {n: imports(n, p, set(mods)) for n, p in mods.items()}
    for n in sorted(graph):
        if n in PACKAGES:
            continue
        print(f"{short(n):22s} -> {', '.join(short(m) for m in sorted(graph[n])) or '-'}")
    print("cycles:", cycles(graph) or "none")
