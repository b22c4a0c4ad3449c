"""The release version; scripts/build-hello.sh rewrites this file for each build."""

__version__ = "0.0.0.dev0"
