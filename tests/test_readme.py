"""The README's Python examples run and print what they say."""

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_block(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_loading_a_data_set_from_python(shared_data, monkeypatch):
    code = python_block("### Loading a data set from Python")
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    monkeypatch.chdir(ROOT)  # the example's data_dir is relative to a clone beside ../shared/data
    monkeypatch.delenv("METALEARNER_DATA", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == expected
