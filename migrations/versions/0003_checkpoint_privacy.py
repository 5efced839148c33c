"""Checkpoints record the privacy settings found in the uploaded file's metadata.

Revision ID: 7c1e5a0f3b2d
Revises: 48b9182dc9d1
Create Date: 2026-11-26 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '7c1e5a0f3b2d'
down_revision: str | None = '48b9182dc9d1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('privacy', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('privacy')
