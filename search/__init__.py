"""hwnas search: latency model, accuracy predictor, evolutionary and gradient search."""
