"""dataset versions: a name holds versions 1, 2, ...; tables and images kept as uploaded, with their profile; a model
version names the dataset version it was trained on

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('kind', sa.String(length=8), nullable=False, server_default='arrays'))
        batch.add_column(sa.Column('target', sa.String(length=256), nullable=True))
        batch.add_column(sa.Column('profile', JSON, nullable=True))
        batch.drop_constraint('uq_datasets_owner_id_name', type_='unique')
        batch.create_unique_constraint(batch.f('uq_datasets_owner_id_name_version'), ['owner_id', 'name', 'version'])
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('dataset_id', sa.String(length=32), nullable=True))
        batch.create_index(batch.f('ix_model_versions_dataset_id'), ['dataset_id'], unique=False)
        batch.create_foreign_key(batch.f('fk_model_versions_dataset_id_datasets'), 'datasets', ['dataset_id'], ['id'],
                                 ondelete='RESTRICT')
    op.create_table('dataset_uploads',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=256), nullable=True),
    sa.Column('task', sa.String(length=16), nullable=True),
    sa.Column('multipart_id', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_dataset_uploads_owner_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_uploads'))
    )
    with op.batch_alter_table('dataset_uploads') as batch:
        batch.create_index(batch.f('ix_dataset_uploads_owner_id'), ['owner_id'], unique=False)
    # versions registered before: the dataset of the job they came from
    op.execute("UPDATE model_versions SET dataset_id = (SELECT jobs.dataset_id FROM jobs "
               "WHERE jobs.id = model_versions.job_id)")


def downgrade() -> None:
    op.drop_table('dataset_uploads')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_constraint('fk_model_versions_dataset_id_datasets', type_='foreignkey')
        batch.drop_index('ix_model_versions_dataset_id')
        batch.drop_column('dataset_id')
    later = "SELECT id FROM datasets WHERE version > 1"  # one name, one dataset again: the first versions stay
    op.execute(f"UPDATE jobs SET dataset_id = NULL WHERE dataset_id IN ({later})")
    op.execute(f"UPDATE batch_jobs SET dataset_id = NULL WHERE dataset_id IN ({later})")
    op.execute(f"DELETE FROM datasets WHERE version > 1")
    with op.batch_alter_table('datasets') as batch:
        batch.drop_constraint('uq_datasets_owner_id_name_version', type_='unique')
        batch.create_unique_constraint(batch.f('uq_datasets_owner_id_name'), ['owner_id', 'name'])
        batch.drop_column('profile')
        batch.drop_column('target')
        batch.drop_column('kind')
        batch.drop_column('version')
