-- clinipipe: runs_on=source
-- 02 · PostgreSQL CDC setup for pipeline 'general_hospital' (runs on the source database).

-- Source side of change data capture, run on PostgreSQL (the source), not on the warehouse.
-- Requirements (the same ones Snowflake's Openflow PostgreSQL connector lists):
--   wal_level = logical; every replicated table has a primary key; replica identity DEFAULT
--   (the primary key) or FULL; a publication over the replicated tables.
-- Every statement is idempotent: running this file twice changes nothing the second time.

-- check: wal_level is not 'logical'. Set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL; the setting only takes effect after a restart.
SELECT 'wal_level = ' || setting AS problem FROM pg_settings
WHERE name = 'wal_level' AND setting <> 'logical';

-- check: a replicated table does not exist on the source. Create it before `clinipipe deploy` (to try clinipipe on the example hospital, `clinipipe synth` creates its tables), or correct the table's name or schema in the spec (names are case-sensitive).
SELECT t.schema_name || '.' || t.table_name AS problem
FROM (VALUES
    ('public', 'patients'),
    ('public', 'providers'),
    ('public', 'encounters'),
    ('public', 'labs'),
    ('public', 'medications'),
    ('public', 'claims'),
    ('public', 'clinical_notes')
) AS t(schema_name, table_name)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = t.schema_name AND c.relname = t.table_name
);

-- check: a replicated table has no primary key. Add one (CDC applies changes by key); a table that only receives inserts can be marked `append_only: true` in the spec instead.
SELECT t.schema_name || '.' || t.table_name AS problem
FROM (VALUES
    ('public', 'patients', false),
    ('public', 'providers', false),
    ('public', 'encounters', false),
    ('public', 'labs', false),
    ('public', 'medications', false),
    ('public', 'claims', false),
    ('public', 'clinical_notes', false)
) AS t(schema_name, table_name, append_only)
WHERE NOT t.append_only AND EXISTS (
    SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = t.schema_name AND c.relname = t.table_name
) AND NOT EXISTS (
    SELECT 1 FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indisprimary AND n.nspname = t.schema_name AND c.relname = t.table_name
);

-- check: a replicated table has REPLICA IDENTITY NOTHING or USING INDEX; deletes and key updates would not reach the warehouse. Run ALTER TABLE ... REPLICA IDENTITY DEFAULT.
SELECT n.nspname || '.' || c.relname AS problem
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relreplident NOT IN ('d', 'f')
  AND (n.nspname, c.relname) IN (
    ('public', 'patients'),
    ('public', 'providers'),
    ('public', 'encounters'),
    ('public', 'labs'),
    ('public', 'medications'),
    ('public', 'claims'),
    ('public', 'clinical_notes')
  );

-- check: no free replication slot for clinipipe (max_replication_slots is used up). Raise max_replication_slots in postgresql.conf and restart PostgreSQL, or drop a slot nobody uses.
SELECT 'max_replication_slots = ' || current_setting('max_replication_slots')
       || ', slots in use: ' || (SELECT count(*) FROM pg_replication_slots) AS problem
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'clinipipe_slot')
  AND (SELECT count(*) FROM pg_replication_slots) >= current_setting('max_replication_slots')::int;

-- check: max_wal_senders leaves no connection for streaming changes. Raise max_wal_senders in postgresql.conf and restart PostgreSQL.
SELECT 'max_wal_senders = ' || current_setting('max_wal_senders') AS problem
WHERE current_setting('max_wal_senders')::int < 1;

-- The publication clinipipe streams from (tables missing from it are added), and the dedicated
-- replication user clinipipe should connect as, "general_hospital_replication" (see inside).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'clinipipe_pub') THEN
        CREATE PUBLICATION "clinipipe_pub";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'patients'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."patients";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'providers'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."providers";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'encounters'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."encounters";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'labs'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."labs";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'medications'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."medications";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'claims'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."claims";
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'clinipipe_pub'
          AND schemaname = 'public' AND tablename = 'clinical_notes'
    ) THEN
        ALTER PUBLICATION "clinipipe_pub" ADD TABLE "public"."clinical_notes";
    END IF;
    -- The dedicated replication user "general_hospital_replication" for source.dsn (least
    -- privilege): LOGIN and REPLICATION only (NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS),
    -- USAGE on the published tables' schemas and SELECT on those tables; it owns nothing. No
    -- password is set here (never in SQL): as a superuser, run psql's
    --   \password "general_hospital_replication"
    -- (or use certificate authentication), then write that user in source.dsn. An existing role
    -- of that name is left as it is (`clinipipe deploy` warns about what it holds beyond need).
    -- Creating the role needs CREATEROLE and REPLICATION, granting needs the tables' owner: when
    -- the user running this file cannot (the replication user itself, on later deploys), this
    -- inner block changes nothing and says so in a NOTICE. Once all is granted it is a no-op.
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'general_hospital_replication') THEN
            BEGIN
                CREATE ROLE "general_hospital_replication" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a concurrent deploy created it
            END;
        END IF;
        IF NOT has_schema_privilege('general_hospital_replication', 'public', 'USAGE') THEN
            GRANT USAGE ON SCHEMA "public" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."patients"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."patients" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."providers"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."providers" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."encounters"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."encounters" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."labs"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."labs" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."medications"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."medications" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."claims"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."claims" TO "general_hospital_replication";
        END IF;
        IF NOT has_table_privilege('general_hospital_replication', '"public"."clinical_notes"', 'SELECT') THEN
            GRANT SELECT ON TABLE "public"."clinical_notes" TO "general_hospital_replication";
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'clinipipe: % cannot create or grant to the replication user % (%): run this file as a superuser or the tables'' owner',
            current_user, 'general_hospital_replication', SQLERRM;
    END;
END
$$;

-- The replication slot ("clinipipe_slot") is created by `clinipipe backfill`, which needs the
-- snapshot the slot exports; creating it here would pin WAL before anyone reads it.
