-- Emergence curves: for every model, site, method, drop_first and layer, the scores of the
-- grid point the selection rule picked, and depth = layer / n_layers so that models of
-- different sizes (GPT-2 small and XL) share one x axis (resid layer 0 = embeddings = 0.0).
-- params: model, site, method (NULL = all); drop_first (default 0; NULL = all, to compare).
SELECT
    m.model,
    m.site,
    m.method,
    m.drop_first,
    m.layer,
    CAST(m.layer AS DOUBLE) / mo.n_layers AS depth,
    mo.n_layers,
    m.row_k,
    m.col_k,
    m.r2,
    m.adjusted_r2,
    m.z,
    m.p,
    m.spec_mean,
    m.spec_median,
    m.n_tokens,
    m.n_neurons
FROM metrics AS m
JOIN models AS mo ON mo.model = m.model
CROSS JOIN params AS p
WHERE m.selected
    AND (p.model IS NULL OR m.model = p.model)
    AND (p.site IS NULL OR m.site = p.site)
    AND (p.method IS NULL OR m.method = p.method)
    AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
ORDER BY m.model, m.site, m.method, m.drop_first, m.layer
