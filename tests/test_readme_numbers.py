"""Every number of the README's headline table comes from the committed report it cites."""

import json
import re

from benchmarks.readme_table import table
from tests.conftest import REPO


def test_the_headline_table_is_the_committed_reports():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## What it reaches (measured)") :]
    cited = re.search(r"\[report\]\((results/[^)]+)/report\.md\)", section).group(1)
    metrics = json.loads((REPO / cited / "metrics.json").read_text())
    shown = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert shown == table(metrics)
