"""Alembic environment of the contimg registry: online only, on a given connection.

The caller (``Registry.migrate``) owns the connection and its transaction:
it has already taken the migration lock, so everything here runs inside that
one transaction and commits (or rolls back) with it."""
from __future__ import annotations

from alembic import context

from dsa110_contimg.migrations import ATTR_CONNECTION, ATTR_SCHEMA, VERSION_TABLE

config = context.config
if context.is_offline_mode():
    raise RuntimeError("contimg registry migrations run online only (Registry.migrate())")
connection = config.attributes.get(ATTR_CONNECTION)
if connection is None:
    raise RuntimeError("contimg migrations need Config.attributes['connection']; use Registry.migrate()")

schema = config.attributes.get(ATTR_SCHEMA)
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    version_table_schema=schema,
    include_schemas=False,
)
with context.begin_transaction():
    context.run_migrations()
