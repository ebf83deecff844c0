"""Schema migrations (Alembic): the database's schema version and the steps between versions.

    versions/0001_runs_settings.py       the schema before folder records (what `store._upgrade` made)
    versions/0002_folder_records.py      runs.updated_at and runs.experiment; the grouping index with it
    versions/0003_runs_layout.py         SQLite: runs.layout, kept equal to provenance.layout by triggers
    versions/0004_record_versions.py     runs.attempt and runs.seq: the version of the last folder record taken in
    versions/0005_device_hours.py        SQLite: runs.device_kind and runs.device_hours, kept equal to the provenance

seedrun.store.engine upgrades a database to HEAD on its first write (one line on stderr says so);
`seedrun db upgrade` does it on request. A database from before versions (no alembic_version table)
is brought up from the start: every step checks what is already there. Reading never upgrades: the
read path copes with every earlier schema.
"""

HEAD = "0005"
