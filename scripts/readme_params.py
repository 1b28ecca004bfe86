"""Regenerate the README's parameter tables from the nodes' PARAMETERS (run after adding one)."""
import re
from pathlib import Path

from ood_monitor.pipeline import parameter_tables

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- parameters:start -->", "<!-- parameters:end -->"

text = README.read_text()
new = re.sub(f"{START}.*?{END}", f"{START}\n{parameter_tables()}{END}", text, flags=re.S)
README.write_text(new)
print("README parameters " + ("updated" if new != text else "already current"))
