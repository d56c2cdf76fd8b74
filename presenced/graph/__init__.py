"""Friendships and blocks from where they really live: the social service.

The social service (Decentraland's `social-service-ea`) keeps the graph in
PostgreSQL and announces changes on Redis pub/sub. This package follows
both and applies what it learns to the store through the same idempotent
operations as `presenced friends add/remove`:

- `social_events`: the social service's Redis messages, parsed (pure);
- `picture`: what the source has applied, compactly (pure);
- `reconcile`: watermarks, overlap windows, verification of event-touched
  pairs and the full comparison, as decisions (pure);
- `postgres`: the queries, with psycopg 3 (run in threads);
- `events_listener`: the Redis subscriber thread;
- `source`: the trio task that joins them (`FriendsDatabase`).

It sits between the stores and the server: it imports the model and the
store's types, and the server gives it the operations to apply changes with.
See docs/friends.md.
"""
