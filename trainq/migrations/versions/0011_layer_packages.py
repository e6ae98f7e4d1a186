"""jobs.plugins and workers.layers: the installed layer packages a job was planned with, and those a worker has, so a
worker without one of them does not take the job

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('plugins', JSON, nullable=True))
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('layers', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('layers')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('plugins')
