-- Topicality beyond token identity, one row per layer (trained models and their untrained
-- twins, is_twin): AMI of the selected token clusters with the document (ami_doc) and with
-- the token id (ami_token); ami_doc_from_token = AMI with the document of clusters predicted
-- from the token id alone (each token id's most common cluster); ami_doc_beyond_token =
-- ami_doc - ami_doc_from_token, the document information beyond what token identity predicts.
-- The topicality table is computed by tnb.topicality.lake_topicality when a query names it.
-- params: model, site, method (NULL = all); drop_first (default 0; NULL = all).
SELECT
    t.model,
    t.site,
    t.method,
    t.drop_first,
    t.layer,
    CAST(t.layer AS DOUBLE) / mo.n_layers AS depth,
    t.is_twin,
    t.row_k,
    t.col_k,
    t.n_positions,
    t.n_docs,
    t.ami_doc,
    t.ami_token,
    t.ami_doc_from_token,
    t.ami_doc_beyond_token
FROM topicality AS t
JOIN models AS mo ON mo.model = t.model
CROSS JOIN params AS p
WHERE (p.model IS NULL OR t.model = p.model OR t.model = CONCAT(p.model, '-untrained'))
ORDER BY t.model, t.site, t.method, t.drop_first, t.layer
