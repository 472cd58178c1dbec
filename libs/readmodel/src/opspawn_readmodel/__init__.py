"""The Postgres read model: tables, migrations, and the queries every reader shares.

Only the scheduler's projection writes these tables; everything else reads. The whole schema can
be dropped and rebuilt by replaying the events stream.
"""
