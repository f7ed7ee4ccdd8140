-- The grid surface: every (row_k, col_k) grid point's scores, for one layer (or each layer).
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
    m.adjusted_r2,
    m.z,
    m.p,
    m.null_mean,
    m.null_sd,
    m.spec_mean,
    m.n_permutations,
    m.selected
FROM metrics AS m
CROSS JOIN params AS p
WHERE (p.model IS NULL OR m.model = p.model)
    AND (p.site IS NULL OR m.site = p.site)
    AND (p.layer IS NULL OR m.layer = p.layer)
    AND (p.method IS NULL OR m.method = p.method)
    AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
ORDER BY m.model, m.site, m.layer, m.method, m.drop_first, m.row_k, m.col_k
