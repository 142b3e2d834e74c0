-- A guard for statements sent together in one round trip: when the work of
-- several statements goes to the server as one message, a check that fails
-- must stop the transaction there, as a `WHERE state = …` that matched no
-- row cannot by itself. SQLSTATE PV001 tells the worker it was this guard.
CREATE FUNCTION provision_assert(condition boolean, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF condition IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'PV001', MESSAGE = message;
    END IF;
    RETURN true;
END
$$;
