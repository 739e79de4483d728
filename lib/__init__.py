"""Workbench library: ingest, embed, index and analyse sensitive medical image collections.

Import submodules directly (``from lib import dataset``); this package keeps its own
import free of heavy dependencies so the CLI starts fast.
"""

__version__ = "0.1.0"
