"""popflow-clamav: a popflow scan plugin that asks clamd about every message.

Enable it in the config with ``plugins: {clamav: {address: 127.0.0.1:3310}}``; see the README.
"""

from popflow_clamav.client import ClamdClient, ClamdError, ScanResult, parse_reply

__version__ = "0.1.0"

__all__ = ["ClamdClient", "ClamdError", "ScanResult", "__version__", "parse_reply"]
