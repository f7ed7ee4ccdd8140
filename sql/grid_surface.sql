-- The grid surface: every (row_k, col_k) grid point's scores, for one layer (or each layer),
-- each with its null: observed (the interaction R^2) against null_mean/null_q95 of n_null refits,
-- z and p per point, p_layer corrected for choosing among the grid's points.
-- params: model, site, layer, method (NULL = all); drop_first (default 0; NULL = all).
SELECT
    m.model,
    m.site,
    m.layer,
    m.method,
    m.drop_first,
    m.row_k,
    m.col_k,
    m.r2,
    m.r2_rows,
    m.r2_cols,
    m.r2_interaction,
    m.adjusted_r2,
    m.statistic,
    m.observed,
    m."null",
    m.n_null,
    m.null_mean,
    m.null_sd,
    m.null_q95,
    m.excess,
    m.z,
    m.p,
    m.p_layer,
    m.stability,
    m.significant,
    m.stable,
    m.spec_mean,
    m.selected,
    m.finding
FROM metrics AS m
CROSS JOIN params AS p
WHERE (p.model IS NULL OR m.model = p.model)
    AND (p.site IS NULL OR m.site = p.site)
    AND (p.layer IS NULL OR m.layer = p.layer)
    AND (p.method IS NULL OR m.method = p.method)
    AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
ORDER BY m.model, m.site, m.layer, m.method, m.drop_first, m.row_k, m.col_k
