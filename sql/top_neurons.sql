-- Top neurons of each neuron cluster: the neurons that most set one token cluster apart.
-- For each neuron, effect = (mean activation over a token cluster - mean over all clustered
-- tokens) / population sd over all clustered tokens, taken at the token cluster where |effect| is
-- largest (best_token_cluster). Neurons are ranked by |effect| within their neuron cluster;
-- ties by lower neuron index. Reads activation_cells: params model, site, layer are required.
-- params: model, site, layer; method (NULL = all); drop_first (default 0; NULL = all);
--         row_k/col_k (NULL = the selected grid point); top_n (10).
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
),
cells AS (
    SELECT t.model, t.site, t.layer, t.method, t.drop_first, t.row_k, t.col_k,
        t.token_cluster, a.neuron, a.value
    FROM activation_cells AS a
    JOIN token_labels AS t ON a.pos = t.pos
),
overall AS (
    -- population sd from sums (exact, so the same in every run, when values are short binary fractions)
    SELECT method, drop_first, neuron, AVG(value) AS mean_all,
        SQRT(GREATEST(AVG(value * value) - AVG(value) * AVG(value), 0.0)) AS sd_all
    FROM cells
    GROUP BY method, drop_first, neuron
),
per_cluster AS (
    SELECT model, site, layer, method, drop_first, row_k, col_k, neuron, token_cluster,
        AVG(value) AS mean_in
    FROM cells
    GROUP BY model, site, layer, method, drop_first, row_k, col_k, neuron, token_cluster
),
effects AS (
    SELECT c.model, c.site, c.layer, c.method, c.drop_first, c.row_k, c.col_k, c.neuron,
        c.token_cluster, c.mean_in, o.mean_all, o.sd_all,
        CASE WHEN o.sd_all > 0 THEN (c.mean_in - o.mean_all) / o.sd_all ELSE 0.0 END AS effect
    FROM per_cluster AS c
    JOIN overall AS o ON c.method = o.method AND c.drop_first = o.drop_first AND c.neuron = o.neuron
),
best AS (
    SELECT *,
        ROW_NUMBER() OVER (
            PARTITION BY method, drop_first, neuron ORDER BY ABS(effect) DESC, token_cluster ASC
        ) AS pick
    FROM effects
),
ranked AS (
    SELECT b.model, b.site, b.layer, b.method, b.drop_first, b.row_k, b.col_k,
        n.neuron_cluster, b.neuron, b.token_cluster AS best_token_cluster,
        b.effect, b.mean_in, b.mean_all, b.sd_all,
        ROW_NUMBER() OVER (
            PARTITION BY b.method, b.drop_first, n.neuron_cluster ORDER BY ABS(b.effect) DESC, b.neuron ASC
        ) AS rank
    FROM best AS b
    JOIN neuron_labels AS n ON b.neuron = n.neuron AND b.method = n.method AND b.drop_first = n.drop_first
    WHERE b.pick = 1
)
SELECT r.model, r.site, r.layer, r.method, r.drop_first, r.row_k, r.col_k, r.neuron_cluster,
    r.rank, r.neuron, r.best_token_cluster, r.effect, r.mean_in, r.mean_all, r.sd_all
FROM ranked AS r
CROSS JOIN params AS p
WHERE r.rank <= p.top_n
ORDER BY r.model, r.site, r.layer, r.method, r.drop_first, r.neuron_cluster, r.rank
