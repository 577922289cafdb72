"""sandboxd: a hardened, Docker-free code-execution daemon for LibreChat."""

__version__ = "0.1.0"
