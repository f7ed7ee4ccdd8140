-- One verdict per layer of every trained model: is its selected grid point significant (the
-- layer-corrected p of the interaction R^2 against its refit null), stable (token labels
-- agree across seeds), and beyond the untrained twin (its excess over its own null is larger
-- than the twin's at the same layer)? finding = selected and significant and stable.
-- beyond_twin is NULL where the lake has no '<model>-untrained' twin for that layer.
-- params: model, site, method (NULL = all); drop_first (default 0; NULL = all).
WITH chosen AS (
    SELECT m.*
    FROM metrics AS m
    CROSS JOIN params AS p
    WHERE m.selected
        AND (p.model IS NULL OR m.model = p.model)
        AND (p.site IS NULL OR m.site = p.site)
        AND (p.method IS NULL OR m.method = p.method)
        AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
),
twins AS (
    SELECT model, site, method, drop_first, layer, observed, excess, p_layer, significant
    FROM metrics
    WHERE selected AND ENDS_WITH(model, '-untrained')
)
SELECT
    c.model,
    c.site,
    c.method,
    c.drop_first,
    c.layer,
    CAST(c.layer AS DOUBLE) / mo.n_layers AS depth,
    c.row_k,
    c.col_k,
    c.statistic,
    c.observed,
    c."null",
    c.n_null,
    c.null_mean,
    c.null_q95,
    c.excess,
    c.z,
    c.p_layer,
    c.significant,
    c.stability,
    c.n_seeds,
    c.stable,
    t.model AS twin,
    t.observed AS twin_observed,
    t.excess AS twin_excess,
    t.p_layer AS twin_p_layer,
    CASE WHEN t.model IS NULL THEN NULL ELSE c.excess > t.excess END AS beyond_twin,
    c.finding
FROM chosen AS c
JOIN models AS mo ON mo.model = c.model
LEFT JOIN twins AS t
    ON t.model = CONCAT(c.model, '-untrained') AND t.site = c.site AND t.method = c.method
    AND t.drop_first = c.drop_first AND t.layer = c.layer
WHERE NOT ENDS_WITH(c.model, '-untrained')
ORDER BY c.model, c.site, c.method, c.drop_first, c.layer
