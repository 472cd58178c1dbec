"""Write ``docs/asyncapi.json`` from the contracts (``make asyncapi`` runs this).

The document is :func:`opspawn_contracts.asyncapi.asyncapi_document`, rendered by
:func:`~opspawn_contracts.asyncapi.render`; it is committed, and a test fails when it differs from
what the contracts generate. ``--check`` only compares: exit 1 (saying so) when the committed
document is out of date, 0 when it is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opspawn_contracts.asyncapi import asyncapi_document, render

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed document; write nothing"
    )
    args = parser.parse_args(argv)
    generated = render(asyncapi_document())
    name = DOCUMENT.relative_to(ROOT)
    if args.check:
        committed = DOCUMENT.read_text() if DOCUMENT.exists() else ""
        if committed != generated:
            print(f"{name} is out of date with the contracts: run `make asyncapi`", file=sys.stderr)
            return 1
        print(f"{name} is up to date")
        return 0
    DOCUMENT.parent.mkdir(exist_ok=True)
    DOCUMENT.write_text(generated)
    print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
