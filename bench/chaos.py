"""The chaos run at benchmark size, by hand (not in CI): `python -m bench.chaos [--clients 200 --requests 50]`.

The same run as tests/reliability/test_chaos.py (3 devnode processes of mixed kinds behind a real gateway,
one SIGKILLed and restarted and one hung every cycle, every answer checked exactly), with more clients.
Prints one summary line (the README's Reliability figures) and exits 1 if any client saw an error.
"""

from __future__ import annotations

from tests.reliability.chaos import main

if __name__ == "__main__":
    main()
