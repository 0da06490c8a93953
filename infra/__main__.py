"""Entry point of the Pulumi program (``Pulumi.yaml`` has ``main: infra/``).

The platform's own command line is ``python -m infra.cli`` (or ``mlops``), not this file.
"""

import sys
from pathlib import Path

# The CLI runs this file by path, so the repository root is not importable by default.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.program import main  # noqa: E402

main()
