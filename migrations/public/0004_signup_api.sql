-- The platform's SQL API: a signup asks for its tenant inside its own
-- transaction, with `provision_request_tenant(...)`, and reads its state in
-- `provision_tenant_status`. Nothing happens before the caller commits; a
-- rollback leaves nothing. `provision create-tenant` records its requests
-- with the same function, so there is one set of rules and one record.

-- Settings the SQL API needs from this project's configuration, written by
-- `provision init` and each worker's start.
CREATE TABLE provision_setting (
    name  text PRIMARY KEY,
    value text NOT NULL,
    CONSTRAINT provision_setting_name_valid CHECK (name IN ('base_domain'))
);

-- A request not registered yet holds its domain: no other request may ask
-- for it meanwhile, whatever the race.
CREATE UNIQUE INDEX provision_tenant_requested_domain_key
    ON provision_tenant (domain) WHERE state = 'requested';

-- Raises the API's error for `field`: SQLSTATE PV010 for a value that
-- breaks a rule, PV011 for one that clashes with what exists; the field is
-- the error's column name, and the message names it too.
CREATE FUNCTION provision_refuse(code text, field text, rule text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = code,
        COLUMN = field,
        MESSAGE = CASE code WHEN 'PV010' THEN 'invalid ' ELSE 'conflict on ' END || field || ': ' || rule;
END
$$;

-- A lower-case DNS name of at least two labels (the rule of
-- `validate::domain`); NULL when it is one, else what is wrong.
CREATE FUNCTION provision_dns_name_problem(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    labels text[] := string_to_array(value, '.');
    label  text;
BEGIN
    IF value = '' OR length(value) > 253 THEN
        RETURN 'must be a DNS name of 1 to 253 characters';
    END IF;
    IF array_length(labels, 1) < 2 THEN
        RETURN format('%L must have at least two labels, like theo.newconcierge.app', value);
    END IF;
    FOREACH label IN ARRAY labels LOOP
        IF length(label) NOT BETWEEN 1 AND 63 THEN
            RETURN 'each label (between dots) must be 1 to 63 characters';
        END IF;
        IF label !~ '^[a-z0-9-]+$' THEN
            RETURN 'must be lower case: only a-z, 0-9, - and dots';
        END IF;
        IF label LIKE '-%' OR label LIKE '%-' THEN
            RETURN 'a label must not start or end with -';
        END IF;
    END LOOP;
    IF labels[array_length(labels, 1)] ~ '^[0-9]+$' THEN
        RETURN 'the last label must not be all digits';
    END IF;
    RETURN NULL;
END
$$;

CREATE TYPE provision_request_result AS (schema_name text, state text, recorded text);

-- Records a request for a tenant, or finds the same request made before
-- (`recorded` = 'existing'). The rules are `provision create-tenant`'s; the
-- password is a Django hash made by the platform's `make_password` (NULL:
-- an unusable password, for a platform that emails a set-your-password
-- link). The new row's trigger announces it; a worker pushes its job once
-- the caller commits.
CREATE FUNCTION provision_request_tenant(
    schema_name         text,
    tenant_name         text,
    domain              text    DEFAULT NULL,
    admin_email         text    DEFAULT NULL,
    admin_password_hash text    DEFAULT NULL,
    trial_days          integer DEFAULT 30,
    seed_demo_data      boolean DEFAULT true,
    requested_by        text    DEFAULT NULL
) RETURNS SETOF provision_request_result
LANGUAGE plpgsql AS $$
DECLARE
    v_schema  text := schema_name;
    v_name    text := tenant_name;
    v_domain  text := domain;
    v_email   text := admin_email;
    v_hash    text := admin_password_hash;
    v_days    integer := trial_days;
    v_demo    boolean := seed_demo_data;
    v_by      text := coalesce(requested_by, 'sql (' || session_user || ')');
    v_base    text;
    v_local   text;
    v_host    text;
    v_problem text;
    v_print   text;
    v_found   public.provision_tenant%ROWTYPE;
    v_owner   text;
BEGIN
    -- schema_name
    IF v_schema IS NULL OR v_schema !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        PERFORM public.provision_refuse('PV010', 'schema_name',
            'must be 1 to 63 characters of a-z, 0-9 and _, starting with a letter');
    END IF;
    IF v_schema IN ('public', 'information_schema') THEN
        PERFORM public.provision_refuse('PV010', 'schema_name', format('%L is reserved by PostgreSQL', v_schema));
    END IF;
    IF v_schema LIKE 'pg\_%' THEN
        PERFORM public.provision_refuse('PV010', 'schema_name', 'must not start with pg_ (reserved by PostgreSQL)');
    END IF;
    -- tenant_name
    IF v_name IS NULL OR btrim(v_name) = '' THEN
        PERFORM public.provision_refuse('PV010', 'tenant_name', 'must not be empty');
    END IF;
    IF char_length(v_name) > 100 THEN
        PERFORM public.provision_refuse('PV010', 'tenant_name',
            format('must be at most 100 characters (got %s)', char_length(v_name)));
    END IF;
    IF v_name ~ '[[:cntrl:]]' THEN
        PERFORM public.provision_refuse('PV010', 'tenant_name', 'must not contain control characters');
    END IF;
    -- domain
    IF v_domain IS NULL THEN
        SELECT s.value INTO v_base FROM public.provision_setting s WHERE s.name = 'base_domain';
        v_domain := v_schema || '.' || coalesce(v_base, 'newconcierge.app');
    END IF;
    v_problem := public.provision_dns_name_problem(v_domain);
    IF v_problem IS NOT NULL THEN
        PERFORM public.provision_refuse('PV010', 'domain', v_problem);
    END IF;
    -- admin_email
    v_email := coalesce(v_email, 'admin@' || v_domain);
    IF length(v_email) > 254 THEN
        PERFORM public.provision_refuse('PV010', 'admin_email', 'must be at most 254 characters');
    END IF;
    IF position('@' IN v_email) = 0 THEN
        PERFORM public.provision_refuse('PV010', 'admin_email', 'must look like name@example.com');
    END IF;
    v_local := substring(v_email FROM '^(.*)@[^@]*$');
    v_host := lower(substring(v_email FROM '@([^@]*)$'));
    IF v_local = '' OR length(v_local) > 64 OR v_local !~ '^[!#$%&*+/=?^_`{|}~.a-zA-Z0-9-]+$'
        OR v_local LIKE '.%' OR v_local LIKE '%.' OR v_local LIKE '%..%' THEN
        PERFORM public.provision_refuse('PV010', 'admin_email',
            'the part before @ must be 1 to 64 letters, digits or .!#$%&*+-/=?^_`{|}~ (no spaces or quotes)');
    END IF;
    v_problem := public.provision_dns_name_problem(v_host);
    IF v_problem IS NOT NULL THEN
        PERFORM public.provision_refuse('PV010', 'admin_email', 'the part after @ ' || v_problem);
    END IF;
    -- admin_password_hash: a hash Django's auth reads, never a password.
    IF v_hash IS NULL THEN
        -- Django's unusable password: `!` and 40 random characters.
        v_hash := '!' || substr(encode(sha256(convert_to(gen_random_uuid()::text || clock_timestamp()::text, 'UTF8')), 'hex'), 1, 40);
    ELSIF length(v_hash) > 128 OR NOT (
           v_hash ~ '^argon2\$argon2id?\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$'
        OR v_hash ~ '^pbkdf2_sha(256|1)\$[0-9]+\$[^$]+\$[A-Za-z0-9+/=]+$'
        OR v_hash ~ '^bcrypt_sha256\$\$2[abxy]\$[0-9]+\$.{53}$'
        OR v_hash ~ '^scrypt\$[0-9]+\$[^$]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+$') THEN
        PERFORM public.provision_refuse('PV010', 'admin_password_hash',
            'must be a password hash made by Django''s make_password (argon2, pbkdf2_sha256, bcrypt_sha256 or scrypt), never the password itself');
    END IF;
    -- trial_days
    IF v_days IS NULL OR v_days NOT BETWEEN 0 AND 3650 THEN
        PERFORM public.provision_refuse('PV010', 'trial_days', 'must be between 0 and 3650');
    END IF;
    v_demo := coalesce(v_demo, true);

    -- The same request (all its details but the password, whose hash
    -- differs every time) is the same signup.
    v_print := encode(sha256(convert_to(
        jsonb_build_array(v_schema, v_name, v_domain, v_email, v_days, v_demo)::text, 'UTF8')), 'hex');
    FOR attempt IN 1..2 LOOP
        SELECT * INTO v_found FROM public.provision_tenant t WHERE t.schema_name = v_schema;
        IF FOUND THEN
            IF v_found.request_fingerprint <> v_print THEN
                PERFORM public.provision_refuse('PV011', 'schema_name',
                    format('tenant %L was already requested with other details; `provision status --schema-name %s` shows them, or choose another schema name',
                           v_schema, v_schema));
            END IF;
            RETURN QUERY SELECT v_schema, v_found.state, 'existing'::text;
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM public.tenants_client c WHERE c.schema_name = v_schema) THEN
            PERFORM public.provision_refuse('PV011', 'schema_name',
                format('a tenant with schema_name %L already exists in tenants_client (made outside this project)', v_schema));
        END IF;
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            PERFORM public.provision_refuse('PV011', 'schema_name',
                format('schema %L already exists in the database', v_schema));
        END IF;
        SELECT c.schema_name INTO v_owner FROM public.tenants_domain d
            JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = v_domain;
        IF FOUND THEN
            PERFORM public.provision_refuse('PV011', 'domain',
                format('domain %L already belongs to tenant %L', v_domain, v_owner));
        END IF;
        BEGIN
            INSERT INTO public.provision_tenant
                (schema_name, tenant_name, domain, admin_email, admin_password_hash, trial_days,
                 seed_demo_data, demo_data_state, request_fingerprint, requested_by)
            VALUES (v_schema, v_name, v_domain, v_email, v_hash, v_days,
                    v_demo, CASE WHEN v_demo THEN 'pending' ELSE 'skipped' END, v_print, v_by)
            ON CONFLICT ON CONSTRAINT provision_tenant_pkey DO NOTHING;
        EXCEPTION WHEN unique_violation THEN
            -- The same schema name committed meanwhile (a double submit
            -- racing this one): look again at what it recorded.
            IF EXISTS (SELECT 1 FROM public.provision_tenant t WHERE t.schema_name = v_schema) THEN
                CONTINUE;
            END IF;
            SELECT t.schema_name INTO v_owner FROM public.provision_tenant t
                WHERE t.domain = v_domain AND t.state = 'requested';
            PERFORM public.provision_refuse('PV011', 'domain',
                format('domain %L is already requested by tenant %L', v_domain, v_owner));
        END;
        IF FOUND THEN
            INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
            VALUES (v_schema, NULL, 'requested', 'request', 0, v_by);
            RETURN QUERY SELECT v_schema, 'requested'::text, 'new'::text;
            RETURN;
        END IF;
        -- Another transaction recorded this schema name meanwhile: look
        -- again at what it recorded.
    END LOOP;
    PERFORM public.provision_refuse('PV011', 'schema_name',
        format('tenant %L was being recorded by another request; try again', v_schema));
END
$$;

-- Each new request is announced (at commit, and only then) on
-- `provision_tenant_requested`, for a worker to push its job at once; each
-- tenant that reaches `ready` or `failed` on `provision_tenant_state`, for
-- the platform's signup page.
CREATE FUNCTION provision_tenant_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('provision_tenant_requested', NEW.schema_name);
    ELSIF NEW.state IN ('ready', 'failed') AND NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('provision_tenant_state',
            json_build_object('schema_name', NEW.schema_name, 'state', NEW.state)::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER provision_tenant_announce
    AFTER INSERT OR UPDATE OF state ON provision_tenant
    FOR EACH ROW EXECUTE FUNCTION provision_tenant_announce();

-- What the platform reads of its tenants' provisioning, without the CLI.
CREATE VIEW provision_tenant_status AS
SELECT t.schema_name,
       t.state,
       t.failed_step,
       t.last_error,
       t.created_at AS requested_at,
       t.ready_at,
       CASE t.state WHEN 'ready' THEN 'active' WHEN 'failed' THEN 'failed' ELSE 'provisioning' END AS lifecycle
FROM provision_tenant t;
