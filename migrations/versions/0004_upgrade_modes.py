"""Upgrade modes and quality reports: a job says how to make its update (gt, distill, auto) and which
unlabelled prompts the organization attached; a delta says what made it and how much to trust it; a
checkpoint may carry prompts. A distilled delta (or a job no GT covers) has no GT.

Revision ID: 0004_upgrade_modes
Revises: 7c1e5a0f3b2d
Create Date: 2026-11-30 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004_upgrade_modes'
down_revision: str | None = '7c1e5a0f3b2d'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=16), nullable=False, server_default='gt'))
        batch_op.add_column(sa.Column('prompts_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('prompts_count', sa.Integer(), nullable=True))
        batch_op.alter_column('gt_id', existing_type=sa.String(length=100), nullable=True)
    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=16), nullable=False, server_default='gt'))
        batch_op.add_column(sa.Column('quality', sa.JSON(), nullable=True))
        batch_op.alter_column('gt_id', existing_type=sa.String(length=100), nullable=True)
        batch_op.alter_column('gt_version', existing_type=sa.String(length=200), nullable=True)
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prompts_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('prompts_count', sa.Integer(), nullable=True))
        batch_op.create_index('ix_checkpoints_prompts_sha256', ['prompts_sha256'])


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index('ix_checkpoints_prompts_sha256')
        batch_op.drop_column('prompts_count')
        batch_op.drop_column('prompts_sha256')
    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.alter_column('gt_version', existing_type=sa.String(length=200), nullable=False)
        batch_op.alter_column('gt_id', existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_column('quality')
        batch_op.drop_column('mode')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('gt_id', existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_column('prompts_count')
        batch_op.drop_column('prompts_sha256')
        batch_op.drop_column('mode')
