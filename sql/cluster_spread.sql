-- What explains each token cluster besides token identity: its spread over documents and
-- over positions in the sequence, next to how much one token dominates it.
-- position_artifact flags a cluster with more than params.artifact_share (0.9) of its
-- positions at one seq_pos: e.g. the first positions of the sequences, whose activations
-- are outliers. Such a cluster is about position, not meaning; do not read it as a topic.
-- params: model, site, layer, method (NULL = all); drop_first (default 0; NULL = all);
--         row_k/col_k (NULL = the selected grid point); artifact_share (0.9).
WITH chosen AS (
    SELECT m.model, m.site, m.layer, m.method, m.drop_first, m.row_k, m.col_k
    FROM metrics AS m
    CROSS JOIN params AS p
    WHERE (p.model IS NULL OR m.model = p.model)
        AND (p.site IS NULL OR m.site = p.site)
        AND (p.layer IS NULL OR m.layer = p.layer)
        AND (p.method IS NULL OR m.method = p.method)
        AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
        AND ((p.row_k IS NULL AND m.selected) OR (m.row_k = p.row_k AND m.col_k = p.col_k))
),
members AS (
    SELECT l.model, l.site, l.layer, l.method, l.drop_first, l.row_k, l.col_k,
        l.label AS token_cluster, t.pos, t.doc_id, t.seq_id, t.seq_pos, t.token_id
    FROM labels AS l
    JOIN chosen AS c
        ON l.model = c.model AND l.site = c.site AND l.layer = c.layer AND l.method = c.method
        AND l.drop_first = c.drop_first AND l.row_k = c.row_k AND l.col_k = c.col_k
    JOIN models AS mo ON mo.model = l.model
    JOIN tokens AS t ON t.stream = mo.stream AND t.pos = l."index"
    WHERE l.axis = 'token'
),
summary AS (
    SELECT model, site, layer, method, drop_first, row_k, col_k, token_cluster,
        COUNT(*) AS n_tokens,
        COUNT(DISTINCT doc_id) AS n_docs,
        COUNT(DISTINCT seq_id) AS n_seqs,
        COUNT(DISTINCT seq_pos) AS n_seq_pos,
        COUNT(DISTINCT token_id) AS n_distinct_tokens,
        AVG(CAST(seq_pos AS DOUBLE)) AS mean_seq_pos
    FROM members
    GROUP BY model, site, layer, method, drop_first, row_k, col_k, token_cluster
),
by_seq_pos AS (
    SELECT model, site, layer, method, drop_first, token_cluster, seq_pos, COUNT(*) AS n,
        ROW_NUMBER() OVER (
            PARTITION BY model, site, layer, method, drop_first, token_cluster
            ORDER BY COUNT(*) DESC, seq_pos ASC
        ) AS rank
    FROM members
    GROUP BY model, site, layer, method, drop_first, token_cluster, seq_pos
),
by_doc AS (
    SELECT model, site, layer, method, drop_first, token_cluster, doc_id, COUNT(*) AS n,
        ROW_NUMBER() OVER (
            PARTITION BY model, site, layer, method, drop_first, token_cluster
            ORDER BY COUNT(*) DESC, doc_id ASC
        ) AS rank
    FROM members
    GROUP BY model, site, layer, method, drop_first, token_cluster, doc_id
),
by_token AS (
    SELECT model, site, layer, method, drop_first, token_cluster, token_id, COUNT(*) AS n,
        ROW_NUMBER() OVER (
            PARTITION BY model, site, layer, method, drop_first, token_cluster
            ORDER BY COUNT(*) DESC, token_id ASC
        ) AS rank
    FROM members
    GROUP BY model, site, layer, method, drop_first, token_cluster, token_id
)
SELECT s.model, s.site, s.layer, s.method, s.drop_first, s.row_k, s.col_k, s.token_cluster,
    s.n_tokens, s.n_docs, s.n_seqs, s.n_seq_pos, s.n_distinct_tokens, s.mean_seq_pos,
    d.doc_id AS top_doc,
    CAST(d.n AS DOUBLE) / s.n_tokens AS top_doc_share,
    q.seq_pos AS top_seq_pos,
    CAST(q.n AS DOUBLE) / s.n_tokens AS top_seq_pos_share,
    CAST(k.n AS DOUBLE) / s.n_tokens AS top_token_share,
    CAST(q.n AS DOUBLE) / s.n_tokens > p.artifact_share AS position_artifact
FROM summary AS s
JOIN by_seq_pos AS q
    ON q.rank = 1 AND s.model = q.model AND s.site = q.site AND s.layer = q.layer
    AND s.method = q.method AND s.drop_first = q.drop_first AND s.token_cluster = q.token_cluster
JOIN by_doc AS d
    ON d.rank = 1 AND s.model = d.model AND s.site = d.site AND s.layer = d.layer
    AND s.method = d.method AND s.drop_first = d.drop_first AND s.token_cluster = d.token_cluster
JOIN by_token AS k
    ON k.rank = 1 AND s.model = k.model AND s.site = k.site AND s.layer = k.layer
    AND s.method = k.method AND s.drop_first = k.drop_first AND s.token_cluster = k.token_cluster
CROSS JOIN params AS p
ORDER BY s.model, s.site, s.layer, s.method, s.drop_first, s.token_cluster
