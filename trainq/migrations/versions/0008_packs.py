"""jobs.pack_id: trials trained together as one packed model share it (the broker delivers a pack's ids at once)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('pack_id', sa.String(length=32), nullable=True))
    op.create_index('ix_jobs_pack_id', 'jobs', ['pack_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_pack_id', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('pack_id')
