"""The README starts with the two commands; the configuration tables in docs/configuration.md are
the ones the code generates."""

import re
from pathlib import Path

from soma.tools.config_table import config_table, method_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_config_table_matches_settings():
    text = CONFIGURATION.read_text()
    match = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", text, re.S)
    assert match, "docs/configuration.md lost its config-table markers"
    assert match.group(1) == config_table(), "regenerate with: python -m soma.tools.config_table"


def test_readme_starts_with_the_two_commands():
    block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_method_table_matches_method_config():
    text = CONFIGURATION.read_text()
    match = re.search(r"<!-- method-table:start -->\n(.*?)\n<!-- method-table:end -->", text, re.S)
    assert match, "docs/configuration.md lost its method-table markers"
    assert match.group(1) == method_table(), "regenerate with: python -m soma.tools.config_table --method"
