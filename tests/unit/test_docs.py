"""The README documents exactly the settings the code has."""

import re
from pathlib import Path

from cryptostream.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(CSP_[A-Z0-9_]+)` \|", README.read_text(), flags=re.M))
    assert documented == {f"CSP_{name.upper()}" for name in Settings.model_fields}
