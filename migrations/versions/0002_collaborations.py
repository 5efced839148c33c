"""Collaborations, their members and contributions; jobs and deltas of pooled upgrades name their collaboration.

Revision ID: 48b9182dc9d1
Revises: 2b280bdbf26b
Create Date: 2026-11-25 20:29:41.139489
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '48b9182dc9d1'
down_revision: str | None = '2b280bdbf26b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('collaborations',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('pair', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('collaborations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_collaborations_org_id'), ['org_id'], unique=False)

    op.create_table('collaboration_members',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('collaboration_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('invited_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['collaboration_id'], ['collaborations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('collaboration_id', 'org_id')
    )
    with op.batch_alter_table('collaboration_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_collaboration_members_org_id'), ['org_id'], unique=False)

    op.create_table('contributions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('collaboration_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['collaboration_id'], ['collaborations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('collaboration_id', 'org_id')
    )
    with op.batch_alter_table('contributions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contributions_checkpoint_id'), ['checkpoint_id'], unique=False)

    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.add_column(sa.Column('collaboration_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_deltas_collaboration_id'), ['collaboration_id'], unique=False)
        batch_op.create_foreign_key('fk_deltas_collaboration_id', 'collaborations', ['collaboration_id'], ['id'],
                                    ondelete='CASCADE')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('collaboration_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_collaboration_id'), ['collaboration_id'], unique=False)
        batch_op.create_foreign_key('fk_jobs_collaboration_id', 'collaborations', ['collaboration_id'], ['id'],
                                    ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_collaboration_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_collaboration_id'))
        batch_op.drop_column('collaboration_id')

    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.drop_constraint('fk_deltas_collaboration_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_deltas_collaboration_id'))
        batch_op.drop_column('collaboration_id')

    with op.batch_alter_table('contributions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contributions_checkpoint_id'))

    op.drop_table('contributions')
    with op.batch_alter_table('collaboration_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_collaboration_members_org_id'))

    op.drop_table('collaboration_members')
    with op.batch_alter_table('collaborations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_collaborations_org_id'))

    op.drop_table('collaborations')
