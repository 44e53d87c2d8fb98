"""hwnas search: latency model, accuracy predictor, evolutionary search, ProxylessNAS, relaxation search."""
