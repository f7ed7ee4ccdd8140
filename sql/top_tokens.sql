-- Top tokens of each token cluster, by shrunk lift. Lift is how much more often the token
-- occurs in the cluster than in the whole clustered stream: count / expected, with
-- expected = cluster_size * stream_count / n_positions. A word seen 3 times, all in one
-- cluster, has the largest lift possible, tied with every other such word; so tokens are
-- ranked by lift_shrunk = (count + shrink) / (expected + shrink), which adds `shrink`
-- pseudo-occurrences at lift 1 and pulls rare words' lift toward 1, and only tokens seen at
-- least min_count times in the cluster are ranked. Raw lift is shown beside it.
-- The baseline is every position labelled at that grid point: the whole stream when
-- drop_first = 0; with drop_first > 0 the dropped leading positions belong to no cluster,
-- so they are left out of the baseline too.
-- Labels join tokens through models.stream (the stream the model's activations align with).
-- Ties: higher shrunk lift, then higher count, then lower token_id.
-- params: model, site, layer, method (NULL = all); drop_first (default 0; NULL = all);
--         row_k/col_k (NULL = the selected grid point); top_n (10); min_count (5); shrink (5).
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
        l.label AS token_cluster, t.token_id, t.token
    FROM labels AS l
    JOIN chosen AS c
        ON l.model = c.model AND l.site = c.site AND l.layer = c.layer AND l.method = c.method
        AND l.drop_first = c.drop_first AND l.row_k = c.row_k AND l.col_k = c.col_k
    JOIN models AS mo ON mo.model = l.model
    JOIN tokens AS t ON t.stream = mo.stream AND t.pos = l."index"
    WHERE l.axis = 'token'
),
counts AS (
    SELECT model, site, layer, method, drop_first, row_k, col_k, token_cluster, token_id,
        MIN(token) AS token, COUNT(*) AS count
    FROM members
    GROUP BY model, site, layer, method, drop_first, row_k, col_k, token_cluster, token_id
),
cluster_sizes AS (
    SELECT model, site, layer, method, drop_first, token_cluster, COUNT(*) AS cluster_size
    FROM members
    GROUP BY model, site, layer, method, drop_first, token_cluster
),
stream_counts AS (
    SELECT model, site, layer, method, drop_first, token_id, COUNT(*) AS stream_count
    FROM members
    GROUP BY model, site, layer, method, drop_first, token_id
),
totals AS (
    SELECT model, site, layer, method, drop_first, COUNT(*) AS n_positions
    FROM members
    GROUP BY model, site, layer, method, drop_first
),
scored AS (
    SELECT c.model, c.site, c.layer, c.method, c.drop_first, c.row_k, c.col_k, c.token_cluster,
        s.cluster_size, c.token_id, c.token, c.count, sc.stream_count,
        CAST(c.count AS DOUBLE) / s.cluster_size AS cluster_share,
        CAST(sc.stream_count AS DOUBLE) / t.n_positions AS stream_share,
        CAST(c.count * t.n_positions AS DOUBLE) / (s.cluster_size * sc.stream_count) AS lift,
        CAST(s.cluster_size * sc.stream_count AS DOUBLE) / t.n_positions AS expected,
        (c.count + p.shrink) / (CAST(s.cluster_size * sc.stream_count AS DOUBLE) / t.n_positions + p.shrink)
            AS lift_shrunk
    FROM counts AS c
    JOIN cluster_sizes AS s
        ON c.model = s.model AND c.site = s.site AND c.layer = s.layer AND c.method = s.method
        AND c.drop_first = s.drop_first AND c.token_cluster = s.token_cluster
    JOIN stream_counts AS sc
        ON c.model = sc.model AND c.site = sc.site AND c.layer = sc.layer AND c.method = sc.method
        AND c.drop_first = sc.drop_first AND c.token_id = sc.token_id
    JOIN totals AS t
        ON c.model = t.model AND c.site = t.site AND c.layer = t.layer AND c.method = t.method
        AND c.drop_first = t.drop_first
    CROSS JOIN params AS p
    WHERE c.count >= p.min_count
),
ranked AS (
    SELECT *,
        ROW_NUMBER() OVER (
            PARTITION BY model, site, layer, method, drop_first, token_cluster
            ORDER BY lift_shrunk DESC, count DESC, token_id ASC
        ) AS rank
    FROM scored
)
SELECT r.model, r.site, r.layer, r.method, r.drop_first, r.row_k, r.col_k, r.token_cluster,
    r.cluster_size, r.rank, r.token_id, r.token, r.count, r.stream_count,
    r.cluster_share, r.stream_share, r.expected, r.lift, r.lift_shrunk
FROM ranked AS r
CROSS JOIN params AS p
WHERE r.rank <= p.top_n
ORDER BY r.model, r.site, r.layer, r.method, r.drop_first, r.token_cluster, r.rank
