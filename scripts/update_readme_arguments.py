"""Regenerate README's argument table from escn_plugin/model/arguments.py (the table a test
compares README against): python scripts/update_readme_arguments.py"""

import re
from pathlib import Path

from escn_plugin.model import arguments

README = Path(__file__).resolve().parents[1] / "README.md"
table = arguments.markdown_table(arguments.ARGUMENTS + arguments.MODEL_ARGUMENTS)
text = README.read_text()
block = re.compile(r"<!-- arguments:begin -->\n.*?<!-- arguments:end -->", re.S)
README.write_text(block.sub(f"<!-- arguments:begin -->\n{table}\n<!-- arguments:end -->", text))
