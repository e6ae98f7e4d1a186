"""workers.jobs_done: kept as attempts end, instead of counted over every attempt on each poll of the worker list

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('jobs_done', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE workers SET jobs_done = (SELECT count(*) FROM attempts "
               "WHERE attempts.worker = workers.name AND attempts.status = 'ended')")


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('jobs_done')
