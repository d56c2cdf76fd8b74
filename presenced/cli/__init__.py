"""The `presenced` command line."""
