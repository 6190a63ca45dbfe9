"""`schemas/` is generated from the code: fail when the committed files are stale."""

import importlib.util
import json

from tests.conftest import ROOT


def test_committed_schemas_match_the_code(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "schemas" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    assert len(written) >= 12 + 6
    stale = [
        str(p.relative_to(tmp_path))
        for p in written
        if not (ROOT / "schemas" / p.relative_to(tmp_path)).exists()
        or json.loads(p.read_text()) != json.loads((ROOT / "schemas" / p.relative_to(tmp_path)).read_text())
    ]
    assert stale == [], f"stale schemas (run `make schemas`): {stale}"
