"""Runs a team can organise: jobs.project, jobs.tags, jobs.note; sweeps.project; a model version's description and
tags. PostgreSQL indexes a job's tags for containment (tags.team = 'vision' is `tags @> {"team": "vision"}`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('project', sa.String(length=100), nullable=False, server_default='default'))
        batch.add_column(sa.Column('tags', JSON, nullable=True))
        batch.add_column(sa.Column('note', sa.Text(), nullable=True))
        batch.create_index('ix_jobs_project_created', ['project', 'created_at'])
    with op.batch_alter_table('sweeps') as batch:
        batch.add_column(sa.Column('project', sa.String(length=100), nullable=False, server_default='default'))
        batch.create_index('ix_sweeps_project', ['project'])
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('description', sa.Text(), nullable=True))
        batch.add_column(sa.Column('tags', JSON, nullable=True))
    # GIN on PostgreSQL; SQLite keeps a plain index it does not use (one schema on both, as the models declare it)
    op.create_index('ix_jobs_tags', 'jobs', ['tags'], postgresql_using='gin', postgresql_ops={'tags': 'jsonb_path_ops'})


def downgrade() -> None:
    op.drop_index('ix_jobs_tags', table_name='jobs')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('tags')
        batch.drop_column('description')
    with op.batch_alter_table('sweeps') as batch:
        batch.drop_index('ix_sweeps_project')
        batch.drop_column('project')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_project_created')
        batch.drop_column('note')
        batch.drop_column('tags')
        batch.drop_column('project')
