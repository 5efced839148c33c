"""Jobs record when and how often their id went to the broker (the sweeper sends again the queued jobs nobody
took); pooled jobs record the organizations whose contributions went into them (who may read them and
their deltas).

Revision ID: 0006_hardening
Revises: 0005_provider
Create Date: 2026-11-30 03:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006_hardening'
down_revision: str | None = '0005_provider'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sends', sa.Integer(), server_default='0', nullable=False))
    op.create_table('job_participants',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'org_id')
    )
    with op.batch_alter_table('job_participants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_participants_org_id'), ['org_id'], unique=False)
    _record_participants()


def _record_participants() -> None:
    """Existing pooled jobs: the owners of the checkpoints they read (those still there)."""
    connection = op.get_bind()
    pooled = connection.execute(sa.text("SELECT id, inputs FROM jobs WHERE collaboration_id IS NOT NULL"))
    for job_id, inputs in pooled.fetchall():
        items = json.loads(inputs) if isinstance(inputs, str) else inputs
        ids = [item["id"] for item in items or []]
        owners = set()
        for checkpoint_id in ids:
            owner = connection.execute(sa.text("SELECT org_id FROM checkpoints WHERE id = :id"),
                                       {"id": checkpoint_id}).scalar()
            if owner is not None:
                owners.add(owner)
        for owner in sorted(owners):
            connection.execute(sa.text("INSERT INTO job_participants (job_id, org_id) VALUES (:job, :org)"),
                               {"job": job_id, "org": owner})


def downgrade() -> None:
    with op.batch_alter_table('job_participants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_participants_org_id'))
    op.drop_table('job_participants')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('sends')
        batch_op.drop_column('sent_at')
