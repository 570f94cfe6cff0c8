"""The dataset readers' JSON and YAML files: `read_json`, `read_yaml` (a mapping), `read_text`; a missing, empty,
unreadable or malformed file is a one-line `DatasetError` naming it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import DatasetError


def read_json(path: Path) -> Any:
    """Parsed JSON, or `DatasetError` for a missing, empty or malformed file (also: nested too deeply for Python's
    parser, or a number of more than 4,300 digits, Python's limit for reading an integer)."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON here (nested more deeply than the parser can follow)") from None
    except ValueError as e:  # int("7" * 5000): Python's limit on the digits of an integer
        raise DatasetError(f"{path}: not valid JSON here ({_parse_limit(e)})") from None


def read_yaml(path: Path) -> dict:
    import yaml

    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DatasetError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid YAML here (nested more deeply than the parser can follow)") from None
    except ValueError as e:  # a number of more than 4,300 digits
        raise DatasetError(f"{path}: not valid YAML here ({_parse_limit(e)})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a YAML mapping with path/train/val/names keys")
    return data


def _parse_limit(e: ValueError) -> str:
    """What a parser's ValueError means, in words: Python reads integers of at most 4,300 digits."""
    if "digits" in str(e):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return first_line(e)


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def read_text(path: Path) -> str:
    """A text file's content (UTF-8; a byte-order mark, as Windows editors write, is dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    if not text.strip():
        raise DatasetError(f"{path}: file is empty")
    return text
