"""Nothing the bus or HTTP brings in is ever executed: no pickle (or its relatives) loads anything,
no eval/exec, no yaml.load (only safe_load), no numpy loading with pickles. Checked on the syntax
tree of every module of the services, the shared library and the benchmarks. Writing a pickle is
allowed (bench-http writes the model file Seldon MLServer reads); reading one is not."""

import ast

from tests.conftest import ROOT

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
WRITE_ONLY = {"dump", "dumps"}
SOURCES = sorted(p for folder in ("services", "shared", "bench") for p in (ROOT / folder).rglob("*.py"))


def unsafe_uses(source: str) -> list[str]:
    found = []
    imported: dict[str, str] = {}  # local name → unsafe module
    used: dict[str, set[str]] = {}  # local name → attributes used on it
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    imported[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            if not all(a.name in WRITE_ONLY for a in node.names):
                found.append(node.module or "")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            used.setdefault(node.value.id, set()).add(node.attr)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                found.append(f"{func.id}()")
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if (owner, func.attr) in {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load")}:
                    found.append(f"{owner}.{func.attr}()")
                if any(k.arg == "allow_pickle" for k in node.keywords):
                    found.append(f"{func.attr}(allow_pickle=...)")
    found += [
        module for name, module in imported.items() if not used.get(name) or not used[name] <= WRITE_ONLY
    ]
    return found


def test_the_check_finds_what_it_looks_for():
    bad = "\n".join(
        ["import pickle", "from joblib import load", "yaml.load(s)", "eval(x)", "np.load(f, allow_pickle=1)"]
    )
    assert sorted(unsafe_uses(bad)) == sorted(
        ["pickle", "joblib", "yaml.load()", "eval()", "load(allow_pickle=...)"]
    )
    assert unsafe_uses("import yaml\nyaml.safe_load(s)\nimport orjson\norjson.loads(b)\n") == []
    assert unsafe_uses("import joblib\njoblib.dump(m, f)\nfrom pickle import dumps") == [], (
        "writing is allowed"
    )
    assert unsafe_uses("import joblib\njoblib.dump(m, f)\njoblib.load(f)") == ["joblib"]
    assert unsafe_uses("import joblib as j\nx = j") == ["joblib"], "handed on: anything may be done with it"


def test_no_module_loads_input_unsafely():
    assert len(SOURCES) > 40  # the tree was found
    offenders = {str(p.relative_to(ROOT)): uses for p in SOURCES if (uses := unsafe_uses(p.read_text()))}
    assert offenders == {}
