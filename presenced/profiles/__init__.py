"""User profiles (names, pictures) from a Catalyst lambdas server, batched and cached.

Low in the layers: it knows HTTP and the profile format, nothing of the server or the engine.
"""

from presenced.profiles.cache import CacheConfig, Profile, ProfileCache
from presenced.profiles.source import ProfileSource

__all__ = ["CacheConfig", "Profile", "ProfileCache", "ProfileSource"]
