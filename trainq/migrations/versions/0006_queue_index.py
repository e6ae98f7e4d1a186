"""a partial index of queued jobs in queue order, per pool: a job's place in its queue is two index range scans

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_queue', 'jobs', ['pool', 'priority', 'created_at'], unique=False,
                    postgresql_where=sa.text("status = 'queued'"), sqlite_where=sa.text("status = 'queued'"))


def downgrade() -> None:
    op.drop_index('ix_jobs_queue', table_name='jobs', postgresql_where=sa.text("status = 'queued'"),
                  sqlite_where=sa.text("status = 'queued'"))
