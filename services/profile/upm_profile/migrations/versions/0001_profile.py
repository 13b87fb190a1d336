"""Create the profile tables (the read model and the service's private tables).

Revision ID: profile_0001
Revises:
Create Date: 2026-11-28 12:16:18.241893
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from upm_common.db import JsonType, UtcDateTime

revision = 'profile_0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('profile_applied_events',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('event_time', UtcDateTime(), nullable=False),
    sa.Column('identifiers', JsonType, nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('applied_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_applied_events', schema=None) as batch_op:
        batch_op.create_index('ix_profile_applied_events_profile', ['profile_id', 'event_time'], unique=False)

    op.create_table('profile_audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('details', JsonType, nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('profile_consents',
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('updated_time', UtcDateTime(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('profile_id', 'channel', 'purpose', name='pk_profile_consents')
    )
    op.create_table('profile_event_counts',
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_time', UtcDateTime(), nullable=False),
    sa.Column('last_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('profile_id', 'name', name='pk_profile_event_counts')
    )
    with op.batch_alter_table('profile_event_counts', schema=None) as batch_op:
        batch_op.create_index('ix_profile_event_counts_name', ['name', 'count'], unique=False)

    op.create_table('profile_event_daily',
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('revenue', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('profile_id', 'name', 'day', name='pk_profile_event_daily')
    )
    with op.batch_alter_table('profile_event_daily', schema=None) as batch_op:
        batch_op.create_index('ix_profile_event_daily_name_day', ['name', 'day'], unique=False)

    op.create_table('profile_events',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('event_time', UtcDateTime(), nullable=False),
    sa.Column('received_time', UtcDateTime(), nullable=False),
    sa.Column('properties', JsonType, nullable=True),
    sa.Column('context', JsonType, nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_events', schema=None) as batch_op:
        batch_op.create_index('ix_profile_events_name_time', ['name', 'event_time'], unique=False)
        batch_op.create_index('ix_profile_events_profile_time', ['profile_id', 'event_time'], unique=False)

    op.create_table('profile_identifiers',
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('type', 'value', name='pk_profile_identifiers')
    )
    with op.batch_alter_table('profile_identifiers', schema=None) as batch_op:
        batch_op.create_index('ix_profile_identifiers_profile_id', ['profile_id'], unique=False)

    op.create_table('profile_identity_conflicts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('other_profile_id', sa.String(length=32), nullable=True),
    sa.Column('identifier', sa.Text(), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_identity_conflicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_profile_identity_conflicts_profile_id'), ['profile_id'], unique=False)

    op.create_table('profile_identity_edges',
    sa.Column('a_type', sa.Text(), nullable=False),
    sa.Column('a_value', sa.Text(), nullable=False),
    sa.Column('b_type', sa.Text(), nullable=False),
    sa.Column('b_value', sa.Text(), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.Column('revoked_time', UtcDateTime(), nullable=True),
    sa.Column('revoked_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('a_type', 'a_value', 'b_type', 'b_value', name='pk_profile_identity_edges')
    )
    with op.batch_alter_table('profile_identity_edges', schema=None) as batch_op:
        batch_op.create_index('ix_profile_identity_edges_b', ['b_type', 'b_value'], unique=False)
        batch_op.create_index('ix_profile_identity_edges_revoked', ['revoked_time'], unique=False)

    op.create_table('profile_merges',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('winner_id', sa.String(length=32), nullable=False),
    sa.Column('loser_id', sa.String(length=32), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('identifiers', JsonType, nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_merges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_profile_merges_loser_id'), ['loser_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_profile_merges_winner_id'), ['winner_id'], unique=False)

    op.create_table('profile_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('profile_profiles',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.Column('updated_time', UtcDateTime(), nullable=False),
    sa.Column('merged_into', sa.String(length=32), nullable=True),
    sa.Column('timezone', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_profiles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_profile_profiles_merged_into'), ['merged_into'], unique=False)

    op.create_table('profile_suppressions',
    sa.Column('identifier_hash', sa.String(length=64), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('created_time', UtcDateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('identifier_hash')
    )
    op.create_table('profile_trait_history',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('op', sa.Text(), nullable=False),
    sa.Column('value', JsonType, nullable=True),
    sa.Column('event_time', UtcDateTime(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('recorded_time', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('profile_trait_history', schema=None) as batch_op:
        batch_op.create_index('ix_profile_trait_history_profile_name', ['profile_id', 'name'], unique=False)

    op.create_table('profile_traits',
    sa.Column('profile_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('value', JsonType, nullable=True),
    sa.Column('value_type', sa.Text(), nullable=False),
    sa.Column('num_value', sa.Float(), nullable=True),
    sa.Column('text_value', sa.Text(), nullable=True),
    sa.Column('bool_value', sa.Boolean(), nullable=True),
    sa.Column('time_value', UtcDateTime(), nullable=True),
    sa.Column('updated_time', UtcDateTime(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('profile_id', 'name', name='pk_profile_traits')
    )
    with op.batch_alter_table('profile_traits', schema=None) as batch_op:
        batch_op.create_index('ix_profile_traits_name_num', ['name', 'num_value'], unique=False)
        batch_op.create_index('ix_profile_traits_name_text', ['name', 'text_value'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('profile_traits', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_traits_name_text')
        batch_op.drop_index('ix_profile_traits_name_num')

    op.drop_table('profile_traits')
    with op.batch_alter_table('profile_trait_history', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_trait_history_profile_name')

    op.drop_table('profile_trait_history')
    op.drop_table('profile_suppressions')
    with op.batch_alter_table('profile_profiles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_profile_profiles_merged_into'))

    op.drop_table('profile_profiles')
    op.drop_table('profile_outbox')
    with op.batch_alter_table('profile_merges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_profile_merges_winner_id'))
        batch_op.drop_index(batch_op.f('ix_profile_merges_loser_id'))

    op.drop_table('profile_merges')
    with op.batch_alter_table('profile_identity_edges', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_identity_edges_revoked')
        batch_op.drop_index('ix_profile_identity_edges_b')

    op.drop_table('profile_identity_edges')
    with op.batch_alter_table('profile_identity_conflicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_profile_identity_conflicts_profile_id'))

    op.drop_table('profile_identity_conflicts')
    with op.batch_alter_table('profile_identifiers', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_identifiers_profile_id')

    op.drop_table('profile_identifiers')
    with op.batch_alter_table('profile_events', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_events_profile_time')
        batch_op.drop_index('ix_profile_events_name_time')

    op.drop_table('profile_events')
    with op.batch_alter_table('profile_event_daily', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_event_daily_name_day')

    op.drop_table('profile_event_daily')
    with op.batch_alter_table('profile_event_counts', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_event_counts_name')

    op.drop_table('profile_event_counts')
    op.drop_table('profile_consents')
    op.drop_table('profile_audit_log')
    with op.batch_alter_table('profile_applied_events', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_applied_events_profile')

    op.drop_table('profile_applied_events')
