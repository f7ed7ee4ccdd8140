-- Emergence curves: for every model, site, method, drop_first and layer, the scores of the
-- grid point the selection rule picked, and depth = layer / n_layers so that models of
-- different sizes (GPT-2 small and XL) share one x axis (resid layer 0 = embeddings = 0.0).
-- Each score comes with what it is compared against: the interaction R^2 (observed) with its
-- null (null_mean, null_q95: the whole grid refitted on n_null matrices without token x neuron
-- association), spec_mean with spec_mean_noise (Gaussian noise of the same shape), spec_mi
-- with 0 (its shuffle expectation is subtracted). An untrained twin is its own model named
-- '<model>-untrained': is_twin marks it, and twin names a trained model's twin when the lake has it.
-- params: model, site, method (NULL = all); drop_first (default 0; NULL = all, to compare).
SELECT
    m.model,
    m.site,
    m.method,
    m.drop_first,
    m.layer,
    CAST(m.layer AS DOUBLE) / mo.n_layers AS depth,
    mo.n_layers,
    ENDS_WITH(m.model, '-untrained') AS is_twin,
    tw.model AS twin,
    m.row_k,
    m.col_k,
    m."input",
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
    m.z_shuffle,
    m.stability,
    m.stability_neurons,
    m.n_seeds,
    m.significant,
    m.stable,
    m.finding,
    m.spec_mean,
    m.spec_median,
    m.spec_mean_noise,
    m.spec_mi,
    m.n_tokens,
    m.n_neurons
FROM metrics AS m
JOIN models AS mo ON mo.model = m.model
LEFT JOIN models AS tw ON tw.model = CONCAT(m.model, '-untrained')
CROSS JOIN params AS p
WHERE m.selected
    AND (p.model IS NULL OR m.model = p.model OR m.model = CONCAT(p.model, '-untrained'))
    AND (p.site IS NULL OR m.site = p.site)
    AND (p.method IS NULL OR m.method = p.method)
    AND (p.drop_first IS NULL OR m.drop_first = p.drop_first)
ORDER BY m.model, m.site, m.method, m.drop_first, m.layer
