-- Bicluster means: the block-mean matrix of one layer, the mean activation of every
-- (token cluster, neuron cluster) block at the selected grid point (or params.row_k/col_k).
-- Reads activation_cells, so params model, site and layer are required.
-- params: model, site, layer; method (NULL = all); drop_first (default 0; NULL = all).
WITH chosen AS (
    SELECT m.model, m.site, m.layer, m.method, m.drop_first, m.row_k, m.col_k
    FROM metrics AS m
    CROSS JOIN params AS p
    WHERE m.model = p.model AND m.site = p.site AND m.layer = p.layer
        AND (p.method IS NULL OR m.method = p.method)
        AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
        AND ((p.row_k IS NULL AND m.selected) OR (m.row_k = p.row_k AND m.col_k = p.col_k))
),
grid_labels AS (
    SELECT l.model, l.site, l.layer, l.method, l.drop_first, l.row_k, l.col_k, l.axis,
        l."index" AS item, l.label
    FROM labels AS l
    JOIN chosen AS c
        ON l.model = c.model AND l.site = c.site AND l.layer = c.layer AND l.method = c.method
        AND l.drop_first = c.drop_first AND l.row_k = c.row_k AND l.col_k = c.col_k
),
token_labels AS (
    SELECT model, site, layer, method, drop_first, row_k, col_k, item AS pos, label AS token_cluster
    FROM grid_labels WHERE axis = 'token'
),
neuron_labels AS (
    SELECT method, drop_first, item AS neuron, label AS neuron_cluster
    FROM grid_labels WHERE axis = 'neuron'
)
SELECT t.model, t.site, t.layer, t.method, t.drop_first, t.row_k, t.col_k,
    t.token_cluster, n.neuron_cluster,
    COUNT(DISTINCT a.pos) AS n_tokens,
    COUNT(DISTINCT a.neuron) AS n_neurons,
    AVG(a.value) AS mean,
    MIN(a.value) AS min,
    MAX(a.value) AS max
FROM activation_cells AS a
JOIN token_labels AS t ON a.pos = t.pos
JOIN neuron_labels AS n ON a.neuron = n.neuron AND n.method = t.method AND n.drop_first = t.drop_first
GROUP BY t.model, t.site, t.layer, t.method, t.drop_first, t.row_k, t.col_k, t.token_cluster, n.neuron_cluster
ORDER BY t.model, t.site, t.layer, t.method, t.drop_first, t.token_cluster, n.neuron_cluster
