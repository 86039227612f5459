"""marketsim: a Binance-compatible market simulator (synthetic, replay, faults).

Stands in for Binance's spot market-data WebSocket streams and a REST subset. It imports nothing
from the pipeline package. Entry points: :func:`marketsim.cli.main` (``python -m marketsim``),
:class:`marketsim.server.Simulator` (in-process, asyncio) and
:class:`marketsim.testing.SimulatorProcess` (child process).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
