"""The provider's side: admin keys, shadow builds and their chunks, GT trainings, and their events.

Revision ID: 0005_provider
Revises: 0004_upgrade_modes
Create Date: 2026-11-30 02:29:09.136232
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_provider'
down_revision: str | None = '0004_upgrade_modes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('admin_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('subject_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stage', sa.String(length=100), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('admin_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_events_subject_id'), ['subject_id'], unique=False)

    op.create_table('gt_trainings',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('pair', sa.String(length=100), nullable=False),
    sa.Column('tasks', sa.JSON(), nullable=False),
    sa.Column('gt_id', sa.String(length=100), nullable=False),
    sa.Column('plans', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('stage', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('card', sa.JSON(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gt_trainings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gt_trainings_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gt_trainings_status'), ['status'], unique=False)

    op.create_table('shadow_builds',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('pair', sa.String(length=100), nullable=False),
    sa.Column('task', sa.String(length=100), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('plan_key', sa.String(length=32), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('reused', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('shadow_builds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_builds_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_builds_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_builds_task'), ['task'], unique=False)

    op.create_table('shadow_chunks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('build_id', sa.String(length=32), nullable=False),
    sa.Column('indices', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['build_id'], ['shadow_builds.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('shadow_chunks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_chunks_build_id'), ['build_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_chunks_status'), ['status'], unique=False)

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('admin', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('admin')

    with op.batch_alter_table('shadow_chunks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_chunks_status'))
        batch_op.drop_index(batch_op.f('ix_shadow_chunks_build_id'))

    op.drop_table('shadow_chunks')
    with op.batch_alter_table('shadow_builds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_builds_task'))
        batch_op.drop_index(batch_op.f('ix_shadow_builds_status'))
        batch_op.drop_index(batch_op.f('ix_shadow_builds_org_id'))

    op.drop_table('shadow_builds')
    with op.batch_alter_table('gt_trainings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gt_trainings_status'))
        batch_op.drop_index(batch_op.f('ix_gt_trainings_org_id'))

    op.drop_table('gt_trainings')
    with op.batch_alter_table('admin_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_events_subject_id'))

    op.drop_table('admin_events')
