"""presenced: a real-time presence daemon for Decentraland-style RPC clients."""

__version__ = "0.1.0"
