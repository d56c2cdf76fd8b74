"""`serve`'s defaults are ServerConfig()'s and EngineConfig()'s: one source of truth.

The options take their defaults from the dataclasses; this catches an option
that states its own (and drifts), and a conversion (seconds to ms, bounds)
that does not round-trip.
"""

from __future__ import annotations

import dataclasses

import typer.main

from presenced.cli.main import app, build_config
from presenced.server.config import ServerConfig


def serve_command():
    return typer.main.get_command(app).commands["serve"]


def test_serve_with_no_options_is_the_default_config():
    defaults = {param.name: param.default for param in serve_command().params}
    assert build_config(defaults) == ServerConfig()


def test_every_setting_of_the_config_has_an_option():
    # Settings that are not operator choices.
    internal = {"tick_interval_s", "worker_index", "engine"}
    options = {param.name for param in serve_command().params}
    renamed = {"auth_timeout_s": "auth_timeout", "auth_window_ms": "auth_window",
               "ping_interval_s": "ping_interval", "ping_timeout_s": "ping_timeout",
               "stuck_timeout_s": "stuck_timeout", "sweep_interval_s": "sweep_interval",
               "friends_file": "friends", "redis_socket_timeout_s": "redis_timeout",
               "redis_flush_interval_s": "redis_flush_interval",
               "redis_flush_min_gap_s": "redis_flush_min_gap",
               "redis_resync_interval_s": "redis_resync_interval",
               "startup_timeout_s": "startup_timeout",
               "max_streams_per_connection": "max_streams",
               "max_ports_per_connection": "max_ports",
               "max_messages_per_s": "max_messages_per_second",
               "blocks_file": "blocks", "friends_db_url": "friends_db",
               "friends_db_reconcile_interval_s": "friends_db_reconcile_interval",
               "friends_db_full_interval_s": "friends_db_full_interval",
               "friends_db_overlap_s": "friends_db_overlap"}
    for field in dataclasses.fields(ServerConfig):
        if field.name in internal:
            continue
        assert renamed.get(field.name, field.name) in options, field.name
