-- The contexts index's FTS row is rewritten only when a context's search text changed. The processor refreshes
-- last_seen (and writes the same attributes again) far more often than a context's attributes change, and
-- `AFTER UPDATE OF search_text` fired for every upsert because the upsert assigns search_text: an FTS5 delete and
-- insert per context, most of the cost of an index event. (PostgreSQL keeps search_tsv as a generated column with
-- a GIN index and has no such trigger.)
DROP TRIGGER insights_contexts_au;
CREATE TRIGGER insights_contexts_au AFTER UPDATE OF search_text ON insights_contexts
    WHEN old.search_text IS NOT new.search_text BEGIN
    INSERT INTO insights_contexts_fts (insights_contexts_fts, rowid, search_text)
        VALUES ('delete', old.id, old.search_text);
    INSERT INTO insights_contexts_fts (rowid, search_text) VALUES (new.id, new.search_text);
END;
